from services.sessionizer.app import main

main()
