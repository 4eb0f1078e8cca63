-- Purchase funnel with windowFunnel(): profiles (customers, else devices) by the furthest
-- step reached in order within 24 hours: product_view -> cart_add -> checkout_start -> purchase.
SELECT level, ['none', 'product_view', 'cart_add', 'checkout_start', 'purchase'][level + 1] AS step,
       count() AS profiles_reaching_exactly,
       sum(profiles_reaching_exactly) OVER (ORDER BY level DESC) AS profiles_reaching
FROM
(
    SELECT ifNull(customer_id, anonymous_id) AS profile,
           windowFunnel(86400)(toDateTime(event_time), event_type = 'product_view',
                               event_type = 'cart_add', event_type = 'checkout_start',
                               event_type = 'purchase') AS level
    FROM kizuna.touchpoints
    GROUP BY profile
)
GROUP BY level
ORDER BY level
