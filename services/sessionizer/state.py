"""What the sessionizer keeps per profile: `ProfileState`, stored under `c:<customer>` or
`a:<device>` in the stage's table (JSON in its changelog, so lists and dicts only).

Every key but the first three is optional: absent means empty, so a quiet profile's state
stays small.
"""

from __future__ import annotations

from typing import TypedDict

from services.domain.touch import MOVED_AT

#: State keys: a customer's profile, a device's.
CUSTOMER, DEVICE = "c:", "a:"


class ProfileState(TypedDict, total=False):
    p: int  # the partition it lives on (its deadlines are indexed per partition)
    runs: list[list[list]]  # open runs of touches, by start (services.sessionizer.sessions)
    #: live sessions emitted: session id -> [started_at, first event_id, version emitted]
    emitted: dict[str, list]
    archive: list[list[int]]  # closed runs kept, per day: [[day, latest end], ...] (archive.py)
    late: list[int]  # the latest late touch taken and the event time then: [at, stream time]
    seen: list[int]  # days whose event ids an earlier version kept under `s:` keys
    moved: int  # the latest login whose claimed touches the open runs hold
    # a customer's
    devices: list[str]  # every device linked to the customer (`kizuna erase` undoes them)
    #: device -> its earliest login: what it claims is measured from there, however late
    #: that login came (states written before 0.10 have none: their links stand as made)
    login_at: dict[str, int]
    awaiting: list[str]  # devices whose history has not come yet: no session closes meanwhile
    claiming: int  # the earliest late login still waiting for its device's history
    held: list[list]  # the customer's late touches held until that history comes
    # a device's
    linked_to: str  # the customer it is linked to
    linked_at: int  # event time of the login that linked it


def login_key(customer: str, device: str) -> str:
    """A login waiting for its device's history, in a partition's logins (`l:`)."""
    return f"{customer}\x00{device}"


def held_key(customer: str) -> str:
    """The customer's touches held for a device's history (`Batch.attribute`), in the
    partition's logins (`l:`) at the earliest time one counts from: they hold the output
    time as a login does. No device id is empty, so no login has this key."""
    return f"{customer}\x00"


def new_profile(partition: int) -> ProfileState:
    """A profile with nothing kept."""
    return {"p": partition, "runs": [], "emitted": {}}


def linked_device(partition: int, customer: str, at: int, before: ProfileState
                  ) -> ProfileState:
    """A device once its login at event time `at` linked it to `customer`: its own touches
    went to the customer; it keeps its history (`archive`, `late`, `seen`) to place a touch
    from before the login that comes later."""
    state = new_profile(partition)
    state["linked_to"], state["linked_at"] = customer, at
    for part in ("archive", "late", "seen"):
        if part in before:
            state[part] = before[part]  # type: ignore[literal-required]
    return state


def upgrade(state: ProfileState) -> bool:
    """Rename what a state stored before 0.9 calls otherwise; whether it changed."""
    if "pending" in state:  # the devices awaited
        state["awaiting"] = state.pop("pending")  # type: ignore[typeddict-item]
        return True
    return False


def awaiting(state: ProfileState) -> list[str]:
    """The devices whose history has not come yet, as any version stored them."""
    return state.get("awaiting") or state.get("pending") or []  # type: ignore[return-value]


def readable(state: object) -> bool:
    """Whether a stored value is a profile's state this version can read."""
    return isinstance(state, dict) and isinstance(state.get("runs"), list) \
        and isinstance(state.get("emitted"), dict)


def kept(state: ProfileState) -> bool:
    """Whether the state holds anything worth storing. A customer's devices are kept after
    their sessions close: `kizuna erase` must find the links to undo."""
    return bool(state["runs"] or state["emitted"] or state.get("archive") or state.get("seen")
                or state.get("linked_to") or state.get("devices"))


def profile_ids(key: str) -> tuple[str, str | None]:
    """(profile_id, customer_id) of a state key."""
    profile = key[2:]
    return profile, profile if key.startswith(CUSTOMER) else None


def note_moved(state: ProfileState) -> None:
    """Note the latest login whose claimed touches a customer's open runs hold: a touch
    before it goes through `reform`; one after it cannot change what that login decided,
    and is inserted by the plain gap rule (the same result, see `sessions.build`)."""
    logins = [touch[MOVED_AT] for run in state["runs"]
              for touch in run if len(touch) > MOVED_AT]
    if logins:
        state["moved"] = max(logins)
    else:
        state.pop("moved", None)
