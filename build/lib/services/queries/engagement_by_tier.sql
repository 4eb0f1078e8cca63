-- Engagement score distribution by tier: customers, mean and quartiles.
SELECT tier,
       count() AS customers,
       round(avg(engagement_score), 2) AS mean,
       round(quantileExact(0.25)(engagement_score), 2) AS p25,
       round(quantileExact(0.5)(engagement_score), 2) AS median,
       round(quantileExact(0.75)(engagement_score), 2) AS p75,
       round(min(engagement_score), 2) AS min,
       round(max(engagement_score), 2) AS max
FROM kizuna.customer_profiles
GROUP BY tier
ORDER BY mean DESC
