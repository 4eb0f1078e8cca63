-- One customer's touchpoints, device history included, in event time, with their properties
-- (the rows of kizuna.touchpoints for the customer, read by the customer's key).
SELECT event_id, event_type, toString(channel) AS channel, event_time, session_id,
       anonymous_id, cart_id, order_id, product_id, quantity, unit_price, value, currency,
       properties
FROM kizuna.customer_touchpoints(customer_id = {customer_id:String})
ORDER BY event_time, event_id
