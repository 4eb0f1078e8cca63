-- One customer's alerts with their reasons, recommendation and resolution (latest status).
SELECT alert_id, alert_type, status, detected_at, severity, reasons, recommended_channel,
       recommended_action, cart_id, cart_value
FROM kizuna.alerts
WHERE customer_id = {customer_id:String}
ORDER BY detected_at, alert_id
