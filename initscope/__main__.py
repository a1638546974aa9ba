from initscope.cli import main

main()
