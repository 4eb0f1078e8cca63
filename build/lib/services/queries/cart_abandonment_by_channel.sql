-- Cart abandonment and recovery by the channel the cart was filled on: carts, carts that
-- raised an abandonment alert, and alerted carts bought after all (the alert resolved).
WITH carts AS
(
    SELECT ifNull(customer_id, anonymous_id) AS profile, cart_id,
           argMin(channel, event_time) AS channel
    FROM kizuna.touchpoints
    WHERE event_type IN ('cart_add', 'cart_view', 'checkout_start') AND cart_id IS NOT NULL
    GROUP BY profile, cart_id
)
SELECT c.channel AS channel,
       count() AS carts,
       countIf(a.alert_id != '') AS abandoned,
       countIf(a.status = 'resolved') AS recovered,
       round(abandoned / carts, 4) AS abandonment_rate,
       round(if(abandoned = 0, 0, recovered / abandoned), 4) AS recovery_rate
FROM carts AS c
LEFT JOIN
(
    SELECT cart_id, customer_id, alert_id, status
    FROM kizuna.alerts
    WHERE alert_type = 'cart_abandonment'
) AS a ON a.cart_id = c.cart_id AND a.customer_id = c.profile
GROUP BY channel
ORDER BY carts DESC
SETTINGS join_use_nulls = 0
