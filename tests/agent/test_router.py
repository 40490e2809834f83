"""The agent's event router (exporter/runtime.py): who hears what, in which order."""

from __future__ import annotations

from dataclasses import dataclass

from exporter.runtime import Router


@dataclass(frozen=True)
class Base:
    n: int


@dataclass(frozen=True)
class Derived(Base):
    pass


def test_handlers_hear_their_class_and_its_subclasses_in_subscription_order() -> None:
    router = Router()
    heard: list[str] = []
    router.subscribe(Base, lambda e: heard.append(f"base {e.n}"))
    router.subscribe(Derived, lambda e: heard.append(f"derived {e.n}"))
    router.subscribe(Derived, lambda e: heard.append(f"first {e.n}"), first=True)
    router.publish(Derived(1))
    router.publish(Base(2))
    router.publish("nobody listens to strings")
    assert heard == ["first 1", "derived 1", "base 1", "base 2"]


def test_an_unsubscribed_handler_hears_nothing_more() -> None:
    router = Router()
    heard: list[int] = []
    unsubscribe = router.subscribe(Base, lambda e: heard.append(e.n))
    router.publish(Base(1))
    unsubscribe()
    unsubscribe()  # twice is harmless
    router.publish(Base(2))
    assert heard == [1]


def test_a_failing_handler_is_counted_and_the_next_still_hears() -> None:
    failures: list[str] = []
    router = Router(lambda what, exc: failures.append(f"{what}: {exc}"))
    heard: list[int] = []

    def broken(event: Base) -> None:
        raise RuntimeError(f"cannot handle {event.n}")

    router.subscribe(Base, broken)
    router.subscribe(Base, lambda e: heard.append(e.n))
    router.publish(Base(7))
    assert heard == [7]
    assert router.failures == {
        "test_a_failing_handler_is_counted_and_the_next_still_hears.<locals>.broken": 1
    }
    assert failures == [
        "event handler test_a_failing_handler_is_counted_and_the_next_still_hears.<locals>"
        ".broken: cannot handle 7"
    ]


def test_publish_all_hands_over_each_event_even_after_one_fails() -> None:
    router = Router(lambda what, exc: None)
    heard: list[int] = []

    def broken_on_one(event: Base) -> None:
        if event.n == 1:
            raise RuntimeError("cannot handle 1")
        heard.append(event.n)

    router.subscribe(Base, broken_on_one)
    router.publish_all([Base(1), Derived(2), Base(3)])
    assert heard == [2, 3]
