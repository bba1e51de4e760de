import anthropic

import tierguard

client = tierguard.ShadowedAnthropic(anthropic.Anthropic())
client.messages.create(category="x", model="m", max_tokens=8, mesages=[{"role": "user", "content": "hi"}])
