-- The purchase funnel, overall and per channel: profiles (customers, else devices) reaching
-- each step in order within 24 hours (windowFunnel), and each step's conversion from the one
-- before. Per channel counts only that channel's touchpoints.
WITH levels AS
(
    SELECT 'all' AS channel, ifNull(customer_id, anonymous_id) AS profile,
           windowFunnel(86400)(toDateTime(event_time), event_type = 'product_view',
                               event_type = 'cart_add', event_type = 'checkout_start',
                               event_type = 'purchase') AS level
    FROM kizuna.touchpoints
    GROUP BY profile
    UNION ALL
    SELECT toString(channel) AS channel, ifNull(customer_id, anonymous_id) AS profile,
           windowFunnel(86400)(toDateTime(event_time), event_type = 'product_view',
                               event_type = 'cart_add', event_type = 'checkout_start',
                               event_type = 'purchase') AS level
    FROM kizuna.touchpoints
    GROUP BY channel, profile
)
SELECT channel, step, ['product_view', 'cart_add', 'checkout_start', 'purchase'][step] AS event_type,
       countIf(level >= step) AS profiles,
       round(profiles / greatest(lagInFrame(profiles, 1, profiles) OVER
                                 (PARTITION BY channel ORDER BY step), 1), 4) AS step_conversion
FROM levels
ARRAY JOIN [1, 2, 3, 4] AS step
GROUP BY channel, step
ORDER BY channel = 'all' DESC, channel, step
