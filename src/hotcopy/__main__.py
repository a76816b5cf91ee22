from hotcopy.cli import main

main()
