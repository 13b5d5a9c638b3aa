from ocipatch.cli import main

main()
