-- One customer's sessions.
SELECT session_id, started_at, ended_at, event_count, channels, purchase_count, revenue,
       status
FROM kizuna.sessions
WHERE customer_id = {customer_id:String}
ORDER BY started_at
