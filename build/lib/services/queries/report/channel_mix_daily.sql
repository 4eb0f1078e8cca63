-- Touchpoints per day and channel: the channel mix over time.
SELECT toDate(event_time) AS day, toString(channel) AS channel, count() AS touchpoints
FROM kizuna.touchpoints
GROUP BY day, channel
ORDER BY day, channel
