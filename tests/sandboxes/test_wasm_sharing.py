"""`SessionUses`: one call of a session may move its files, and only while no other runs; a
call that leaves (ended, failed or cancelled, even by an anyio scope that cancels every await)
gives the session back at once, and a call cancelled while it waits leaves no trace."""

from __future__ import annotations

from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

from sandboxes.wasm._sharing import SessionUses

pytestmark = pytest.mark.anyio

FILES = Path("/sessions/a/files")
WAIT_S = 5.0


async def _enter_and_hold(
    uses: SessionUses, moves: list[bool], inside: anyio.Event, release: anyio.Event
) -> None:
    async with uses.enter(FILES, wants_to_move=True) as moving:
        moves.append(moving)
        inside.set()
        await release.wait()


async def test_a_call_waits_while_another_moves_the_files_then_moves_them_itself() -> None:
    uses = SessionUses()
    moves: list[bool] = []
    first_in, second_in, release_first, release_second = (anyio.Event() for _ in range(4))
    with anyio.fail_after(WAIT_S):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(_enter_and_hold, uses, moves, first_in, release_first)
            await first_in.wait()
            tasks.start_soon(_enter_and_hold, uses, moves, second_in, release_second)
            while uses.in_flight(FILES) < 2:  # the second call reaches its wait
                await anyio.lowlevel.checkpoint()
            assert moves == [True]
            release_first.set()
            await second_in.wait()
            assert moves == [True, True]
            release_second.set()
    assert uses.in_flight(FILES) == 0


async def test_a_call_cancelled_by_a_scope_gives_the_files_back_at_once() -> None:
    uses = SessionUses()
    moves: list[bool] = []
    holder = anyio.CancelScope()
    held, waiter_in, release = anyio.Event(), anyio.Event(), anyio.Event()

    async def hold_until_cancelled() -> None:
        with holder:  # every await from the cancel on raises, the leave's included
            async with uses.enter(FILES, wants_to_move=True) as moving:
                moves.append(moving)
                held.set()
                await anyio.sleep_forever()

    with anyio.fail_after(WAIT_S):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(hold_until_cancelled)
            await held.wait()
            tasks.start_soon(_enter_and_hold, uses, moves, waiter_in, release)
            while uses.in_flight(FILES) < 2:  # the waiting call reaches its wait
                await anyio.lowlevel.checkpoint()
            holder.cancel()
            await waiter_in.wait()
            assert moves == [True, True]  # the files were given back, to be moved again
            release.set()
    assert uses.in_flight(FILES) == 0


async def test_a_call_cancelled_while_waiting_leaves_no_trace() -> None:
    uses = SessionUses()
    moves: list[bool] = []
    inside, release = anyio.Event(), anyio.Event()
    with anyio.fail_after(WAIT_S):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(_enter_and_hold, uses, moves, inside, release)
            await inside.wait()
            with anyio.CancelScope() as waiting:
                waiting.cancel()
                async with uses.enter(FILES, wants_to_move=True):
                    pytest.fail("entered while another call moved the files")
            assert uses.in_flight(FILES) == 1
            release.set()
    assert uses.in_flight(FILES) == 0
    async with uses.enter(FILES, wants_to_move=False) as moving:
        assert not moving and uses.in_flight(FILES) == 1
