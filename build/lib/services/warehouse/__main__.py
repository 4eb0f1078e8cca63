from services.warehouse.service import main

main()
