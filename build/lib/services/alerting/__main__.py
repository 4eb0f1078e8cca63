from services.alerting.app import main

main()
