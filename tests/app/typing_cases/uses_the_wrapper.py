import anthropic
from anthropic.types import Message

import tierguard

client = tierguard.ShadowedAnthropic(anthropic.Anthropic())
ok: anthropic.Anthropic = client
msg: Message = client.messages.create(category="x", model="claude-haiku-4-5", max_tokens=8,
                                      messages=[{"role": "user", "content": "hi"}])
for event in client.messages.create(category="x", model="claude-haiku-4-5", max_tokens=8, stream=True,
                                    messages=[{"role": "user", "content": "hi"}]):
    print(event.type)
with client.with_options(timeout=5).messages.stream(category="x", model="m", max_tokens=8,
                                                     messages=[{"role": "user", "content": "hi"}]) as s:
    print(s.get_final_message().content)
raw = client.messages.with_raw_response.create(category="x", model="m", max_tokens=8,
                                               messages=[{"role": "user", "content": "hi"}])
print(raw.parse().id, raw.headers)
n: int = client.messages.count_tokens(category="x", model="m", messages=[]).input_tokens
beta = client.beta.messages.create(category="x", model="m", max_tokens=8, betas=["b"], messages=[])
print(beta.id, client.tierguard_stats())
with tierguard.ShadowedAnthropic(api_key="k") as c2:
    print(c2.messages.create(model="m", max_tokens=1, messages=[]).id)
