-- Every customer's engagement score with their tier: the distribution of scores by tier.
SELECT tier, engagement_score
FROM kizuna.customer_profiles
ORDER BY tier, engagement_score
