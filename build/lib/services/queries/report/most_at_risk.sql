-- The most at-risk customers: open churn-risk alerts, most severe first, then the least engaged.
SELECT a.customer_id AS customer_id, max(a.severity) AS severity,
       round(any(p.engagement_score), 1) AS score, any(p.tier) AS tier,
       arrayStringConcat(arrayDistinct(groupArrayArray(a.reasons)), ', ') AS reasons
FROM kizuna.alerts AS a
LEFT JOIN kizuna.customer_profiles AS p ON p.customer_id = a.customer_id
WHERE a.alert_type = 'churn_risk' AND a.status = 'open'
GROUP BY a.customer_id
ORDER BY severity DESC, score ASC, customer_id
LIMIT 10
