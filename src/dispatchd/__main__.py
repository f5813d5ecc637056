from dispatchd.cli import main

main()
