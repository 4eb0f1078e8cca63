"""Reading what an earlier version of alerting stored, in one place: each customer's state
and its carts as this version keeps them. Each change of layout has its test."""

from __future__ import annotations

from services.alerting import churn
from services.alerting.carts import OPEN, RESOLVED, CartState, new_state
from services.domain import engagement
from services.domain.eventtime import NEVER
from services.domain.touch import AT, EVENT_ID


def customer_state(state: dict) -> dict:
    """A customer's state with every part, whatever version of the stage stored it (states
    written before churn risk existed have no `churn` and `unsettled`; before 0.9 `unsettled`
    was `pending`, and the profile's `recent_event_ids` `recent`)."""
    state["cart"] = cart_state(state.get("cart") or new_state())
    state["profile"] = engagement.upgraded(state.get("profile") or engagement.new_state())
    state.setdefault("churn", churn.new_state())
    state.setdefault("unsettled", state.pop("pending", []))  # its name before 0.9
    state.setdefault("decided", [])
    state.setdefault("settled", NEVER)  # touches applied up to there (`_release`)
    state.setdefault("recorded", {})  # alert id -> what was emitted of it (`_emit`)
    return state


def cart_state(state: dict) -> CartState:
    """The state as this version keeps it, whatever version stored it. Carts stored by an
    earlier one (one dict per open episode, judged eagerly) become touches: the episode's own
    for its evidence and times, its items as they stood; purchases were times only, then
    [time, counts_at]; alerts had no version and were all sent."""
    if "sent" not in state:  # stored before the list of sent deadlines existed
        last = state.pop("last_sent_at", None)
        state["sent"] = [] if last is None else [last]
    state.setdefault("judged", None)
    state.setdefault("arrived", None)
    state.setdefault("bases", {})
    state.setdefault("capped_ids", [])
    if "fresh" in state:  # the carts to judge again, so named before 0.10
        state["rejudge"] = state.pop("fresh")
    state.pop("lateness", None)  # a copy of the setting, stored before 0.10
    purchases = state["purchases"]
    if purchases and isinstance(purchases[0], int):  # times only, before
        state["purchases"] = [[t, t, f"purchase@{t}"] for t in purchases]
    elif purchases and len(purchases[0]) == 2:  # [time, counts_at], before
        state["purchases"] = [[t, at, f"purchase@{t}"] for t, at in purchases]
    for alert in state["alerts"]:
        if "version" not in alert:  # every alert was sent, before
            alert["version"] = 2 if alert["resolved"] else 1
            alert["status"] = RESOLVED if alert["resolved"] else OPEN
            alert.setdefault("start", alert["detected_at"] - 1)
            alert.setdefault("reasons", [])
    for key, cart in list(state["carts"].items()):
        if not isinstance(cart, dict):
            continue
        if cart.get("done") or cart.get("last_activity") is None:
            del state["carts"][key]
            continue
        moved, currency = cart.get("moved_at"), cart.get("currency")
        touches = [[t, event_id, "cart_view" if t <= cart["last_activity"] else "cart_remove",
                    None, None, None, currency, moved] for t, event_id in cart["evidence"]]
        first = [cart["first"], cart["first_event_id"]]
        touches += [[*first, "cart_add", p, q, price, currency, moved]
                    for p, (q, price) in cart["items"].items()]
        if cart["had_items"] and not cart["items"]:
            touches.append([*first, "cart_remove", "-", 0, None, currency, moved])
        state["carts"][key] = sorted(touches, key=lambda x: (x[AT], x[EVENT_ID]))
    return state  # type: ignore[return-value]
