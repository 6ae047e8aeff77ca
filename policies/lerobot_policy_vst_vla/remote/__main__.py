from .folder import main

main()
