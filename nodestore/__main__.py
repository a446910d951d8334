from nodestore.cli import main

main()
