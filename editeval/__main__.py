from editeval.cli import main

main()
