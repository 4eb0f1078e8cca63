-- Alert outcomes: alerts by type and leading reason, how many were resolved (the customer
-- bought after the alert), and the channels recommended.
SELECT alert_type,
       reasons[1] AS reason,
       count() AS alerts,
       countIf(status = 'resolved') AS resolved,
       round(resolved / alerts, 4) AS resolved_rate,
       round(avg(severity), 2) AS mean_severity,
       topK(3)(ifNull(recommended_channel, 'none')) AS top_channels
FROM kizuna.alerts
GROUP BY alert_type, reason
ORDER BY alert_type, alerts DESC
