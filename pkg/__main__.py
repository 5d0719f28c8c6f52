from biolm.cli.app import main

main()
