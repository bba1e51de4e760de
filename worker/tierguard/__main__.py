from tierguard.cli import main

main()
