-- One customer's profile: score, tier, RFM segment, BTYD inputs and purchase rhythm, channels.
SELECT * FROM kizuna.customer_profiles WHERE customer_id = {customer_id:String}
