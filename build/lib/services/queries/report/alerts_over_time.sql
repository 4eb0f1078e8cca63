-- Alerts per day of detection: cart alerts sent (published: open or resolved) and recovered
-- (resolved by a later purchase), churn-risk alerts by reason (an alert with two reasons
-- counts under each). Historical decisions, recorded and never sent, are left out.
SELECT toDate(detected_at) AS day, series, count() AS alerts
FROM
(
    SELECT detected_at,
           arrayJoin(if(alert_type = 'cart_abandonment',
                        if(status = 'resolved', ['cart: sent', 'cart: recovered'],
                           ['cart: sent']),
                        arrayMap(r -> concat('churn: ', r),
                                 arrayFilter(r -> r != 'purchased_after_alert', reasons))))
               AS series
    FROM kizuna.alerts
    WHERE status IN ('open', 'resolved')
)
GROUP BY day, series
ORDER BY day, series
