from services.engagement_scorer.app import main

main()
