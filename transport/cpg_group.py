"""The state machine every member of a CPG group runs over the agreed stream.

Pure code: events in (CPG deliveries and configuration changes, in the order
corosync agreed on), calls out through a `GroupPort` (multicast a message,
deliver one to a local logical member, report a view, say that this process
was expelled). No handle, no socket, no clock: `transport.cpg_connection`
runs it on corosync, and tests run it on hand-made event streams. The design
(logical members, views at stream positions, state transfer to joiners,
partition merges, expulsion of silent members, fragmentation) is in
`transport.cpg`'s docstring; the messages and the agreed state are in
`transport.cpg_wire`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from typing import Any, Protocol

import msgpack

from transport import cpg_control
from transport.base import View
from transport.cpg_wire import (
    BROADCAST,
    F_BATCH,
    F_MORE,
    HDR,
    K_ALIVE,
    K_BYE,
    K_DATA,
    K_EXPEL,
    K_FOUND,
    K_HELLO,
    K_MERGE,
    K_STATE,
    SILENCE,
    Agreed,
    Deliver,
    Event,
    Logical,
    Member,
    batch_items,
)

log = logging.getLogger("transport.cpg")

#: the control messages whose bodies are checked before they count, and how
_CONTROL = {
    K_HELLO: cpg_control.HELLO,
    K_MERGE: cpg_control.MERGE,
    K_EXPEL: cpg_control.MEMBER,
    K_FOUND: cpg_control.FOUND,
    K_STATE: cpg_control.STATE,
}
_NAMES = {K_HELLO: "HELLO", K_MERGE: "MERGE", K_EXPEL: "EXPEL", K_FOUND: "FOUND", K_STATE: "STATE"}


class GroupPort(Protocol):
    """What the machine asks of the connection that runs it."""

    def multicast(self, kind: int, lid: int, dest: int, payload: bytes) -> None:
        """Send a message into the group's agreed stream."""

    def deliver(self, lid: int, src: int, payload: bytes) -> None:
        """Hand a DATA payload from pnn `src` to our logical member `lid`."""

    def new_view(self, lid: int, view: View, *, first: bool) -> None:
        """Our logical member `lid` has a new view (`first`: its HELLO was just delivered)."""

    def expelled(self) -> None:
        """The group dropped this process: start over as a fresh member."""

    def start_over(self, why: str) -> None:
        """Leave the group and join it again as a fresh member (`why`: for the log)."""

    def founded(self) -> None:
        """We found the group's state anew (FOUND): announce our logical members again."""

    def members_changed(
        self, members: list[Member], left: list[Member], joined: list[Member]
    ) -> None:
        """CPG membership changed (liveness bookkeeping)."""

    def expel_applied(self, member: Member) -> None:
        """An EXPEL of `member` took effect: stop asking for it."""

    def silence_announced(self, member: Member, seconds: float) -> None:
        """`member` says it expels a member silent for `seconds` (a new value)."""


class Group:
    """This process's copy of the group state, fed the agreed stream.

    `local` holds our own logical members (lid -> pnn); `active` those whose
    HELLO has been delivered, which see views and messages from then on.
    """

    def __init__(self, me: Member, port: GroupPort, local: dict[int, int]) -> None:
        self.me = me
        self.port = port
        self.local = local
        self.active: set[int] = set()
        #: our members whose HELLO came during a merge: active, with their
        #: first view, once it completes
        self.first_view_due: set[int] = set()
        self.joined = False  # our own join confchg was seen
        #: joiner: the processes in the group before our join that are still
        #: in it; one of them sends our state (see `_joiner_found`)
        self.older: set[Member] = set()
        self.synced = False
        self.state = Agreed()
        self.cpg_members: list[Member] = []
        self.buffer: list[Event] = []  # while waiting for STATE
        self.base_snapshot_members: list[Member] = []
        self.fragments: dict[Logical, list[bytes]] = {}
        self.peek_fragments: dict[Logical, list[bytes]] = {}
        #: partition merge in progress: members whose MERGE we still wait for
        self.merge_expect: set[Member] | None = None
        #: the highest view id of the sides whose MERGE came so far (ours too)
        self.merge_view_id = 0
        #: the highest counts of merges (`Agreed.merges`) those MERGEs brought
        self.merge_counts: dict[str, int] = {}
        #: the members that had state when the merge began
        self.merge_members: set[Member] = set()
        #: which merge this is: who merges, and how many merges of the same
        #: processes came before (`_merge_tag`)
        self.merge_tag: list[Any] = []

    def pnns_of(self, m: Member) -> list[int]:
        """The pnns of process `m`'s logical members, for log lines."""
        return sorted(pnn for lm, pnn in self.state.members.items() if (lm[0], lm[1]) == m)

    # -- input ----------------------------------------------------------------

    def event(self, ev: Event) -> None:
        if self.synced:  # the usual case, first
            if len(ev) == 2:
                self._apply_message(ev[0], ev[1])
            else:
                self._apply_confchg(ev[0], ev[1], ev[2], ev[3])
            return
        if not self.joined:
            if len(ev) == 4 and self.me in ev[2]:  # our own join confchg
                members, _left, joined, _merged = ev
                self.joined = True
                self.cpg_members = list(members)
                self.older = set(members) - set(joined)
                self.port.members_changed(list(members), [], list(members))
                if set(members) == set(joined):
                    # Every member is new: we found the group's state together.
                    self.state = Agreed(synced=set(members))
                    self.synced = True
                else:
                    self.base_snapshot_members = list(members)
            return
        self.buffer.append(ev)
        if len(ev) == 2:
            if self._peek_expel(ev):
                # Expelled before our STATE was sent, nobody sends it now.
                self.port.expelled()
                return
            found = self._peek_found(ev)
            if found is not None:
                self._joiner_found(*found)
                return
            body = self._peek_state(ev)
            if body is not None and self._counts(body):
                self._install(body)
        else:
            self.cpg_members = list(ev[0])
            self.older -= set(ev[1])
            self.port.members_changed(list(ev[0]), ev[1], ev[2])
            if ev[3] and not self.older:
                # Our ring merged with another, and nobody who could send us
                # a state is left on our side: the other side counts us as
                # one that has state and waits for a MERGE we cannot send.
                self.port.start_over(
                    "a partition merged with ours while nobody could give us state"
                )

    def _peek_expel(self, ev: Deliver) -> bool:
        """Is `ev` an EXPEL naming this process (joiner side)?"""
        msg = ev[1]
        if _kind(msg) != K_EXPEL:
            return False
        target = cpg_control.body_or_none(cpg_control.MEMBER, msg[HDR.size :])
        return target is not None and tuple(target) == self.me

    def _peek_state(self, ev: Deliver) -> dict[str, Any] | None:
        """The STATE addressed to us, if `ev` is one (joiner side)."""
        msg = ev[1]
        if len(msg) < HDR.size:
            return None
        kind, flags, _lid, _dest = HDR.unpack_from(msg)
        if kind != K_STATE:
            return None
        sender = (ev[0][0], ev[0][1], _lid)
        if flags & F_MORE:
            self.peek_fragments.setdefault(sender, []).append(msg[HDR.size :])
            return None
        whole = b"".join([*self.peek_fragments.pop(sender, []), msg[HDR.size :]])
        body: dict[str, Any] | None = cpg_control.body_or_none(cpg_control.STATE, whole)
        if body is None or tuple(body["target"]) != self.me:
            return None  # (a malformed one: the next STATE counts)
        return body

    def _counts(self, body: dict[str, Any]) -> bool:
        """Whether the group counts us synced at this STATE.

        Not when its sender was expelled before it in the stream: a leader
        that lags (stopped, then reading its backlog) sends our STATE after
        the others expelled it, and they ignore whatever it sends. We cannot
        judge that expel without the state, so we try the snapshot on a
        copy of this machine, with no effects, and see whether the STATE
        made us synced there; if not, we wait for the next one, which the
        new leader sends at the expel. (Installing it anyway left us synced
        where the group had us pending: with the others gone, no member
        that counted as synced was left to bring the next joiners in;
        tests/transport/test_cpg_group_explorer.py.)
        """
        trial = Group(self.me, _QUIET, dict(self.local))
        trial.joined = True
        trial.base_snapshot_members = list(self.base_snapshot_members)
        trial.buffer = list(self.buffer)
        trial._install(body)
        return self.me in trial.state.synced

    def _install(self, body: dict[str, Any]) -> None:
        """Adopt the leader's snapshot (taken at our join) and replay what followed."""
        snap = body["snapshot"]
        self.state = Agreed.restore(snap)
        self.cpg_members = list(self.base_snapshot_members)
        self.synced = True
        # Partial messages in flight at our join: complete them like everyone else.
        self.fragments = {(n, p, lid): list(parts) for n, p, lid, parts in snap["fragments"]}
        self.peek_fragments = {}
        self._resume_merge(snap.get("merge"))
        buffered, self.buffer = self.buffer, []
        log.debug("%s: state transfer received, replaying %d events", self.me, len(buffered))
        for ev in buffered:
            self.event(ev)  # (synced now: applied as it comes)

    def _reassemble(self, sender: Logical, flags: int, msg: bytes) -> bytes | None:
        """Collect fragments per logical sender (FIFO per sender makes this enough)."""
        if flags & F_MORE:
            self.fragments.setdefault(sender, []).append(msg[HDR.size :])
            return None
        parts = self.fragments.pop(sender, None)
        if parts is None:
            return msg[HDR.size :]
        parts.append(msg[HDR.size :])
        return b"".join(parts)

    def _apply_message(self, src: Member, msg: bytes) -> None:
        if len(msg) < HDR.size or src in self.state.expelled:
            return  # an expelled process no longer counts, whatever it sends
        kind, flags, lid, dest = HDR.unpack_from(msg)
        sender = (src[0], src[1], lid)
        if flags & F_MORE or self.fragments:
            payload = self._reassemble(sender, flags, msg)
            if payload is None:
                return
        else:  # the usual case: a whole message, nobody's fragments pending
            payload = msg[HDR.size :]
        st = self.state
        if kind == K_DATA:
            pnn = st.members.get(sender)
            if pnn is None:
                return
            self._deliver(pnn, batch_items(payload) if flags & F_BATCH else ((dest, payload),))
        elif kind == K_ALIVE:
            if len(payload) == SILENCE.size:
                self._silence(src, SILENCE.unpack(payload)[0])
        elif kind == K_BYE:
            if st.members.pop(sender, None) is not None:
                self._recompute()
        elif kind in _CONTROL:
            try:
                body = cpg_control.body(_CONTROL[kind], payload)
            except cpg_control.Malformed as exc:
                log.warning(
                    "%s: ignored a malformed %s from %s: %s", self.me, _NAMES[kind], src, exc
                )
                return
            self._apply_control(src, sender, kind, body)

    def _apply_control(self, src: Member, sender: Logical, kind: int, body: Any) -> None:
        """A HELLO, MERGE, EXPEL, FOUND or STATE whose body has its shape (`cpg_control`)."""
        st = self.state
        if kind == K_HELLO:
            # Every view the joiner gets comes after the last one it saw
            # (its own solo view, if its corosync died): also its first view
            # here, which during a merge is not a new view id of the group's.
            st.view_id = max(st.view_id, body["last_view_id"] + 1)
            st.members[sender] = body["pnn"]
            self._silence(src, body.get("silence"))
            self._recompute()
            lid = sender[2]
            if src == self.me and lid in self.local and lid not in self.active:
                if self.merge_expect is None:
                    self._activate(lid, View(st.view_id, st.view))
                else:
                    # Our HELLO came during a merge: the view it would give
                    # now is this side's, which nobody installs once the
                    # merge is done. Our first view is the merged one, and
                    # what the group delivers before it is not for us.
                    self.first_view_due.add(lid)
        elif kind == K_MERGE:
            self._on_merge(src, body)
        elif kind == K_EXPEL:
            self._on_expel(src, (body[0], body[1]))
        elif kind == K_FOUND:
            if not self._has_state(src):
                self.port.start_over(f"member {src} founded the group's state anew")
        elif kind == K_STATE:
            target = (body["target"][0], body["target"][1])
            if target in self.cpg_members:
                st.synced.add(target)
            st.pending.pop(target, None)

    def _deliver(self, pnn: int, items: Iterable[tuple[int, bytes]]) -> None:
        """DATA payloads from node `pnn`, (destination, payload) in order, each
        to our active members it is for."""
        active, port = self.active, self.port
        targets = list(self.local.items())
        for dest, payload in items:
            for local, local_pnn in targets:
                if local in active and (dest == BROADCAST or dest == local_pnn):
                    port.deliver(local, pnn, payload)

    def _activate(self, lid: int, view: View) -> None:
        """Our member `lid` is in the group from `view`, its first view, on."""
        self.active.add(lid)
        self.port.new_view(lid, view, first=True)

    def _silence(self, member: Member, seconds: object) -> None:
        """Record what `member` said of its expel silence; nothing (a member
        from before it was said) or nonsense says nothing."""
        if isinstance(seconds, bool) or not isinstance(seconds, int | float):
            return
        if not 0 < seconds < math.inf:
            return
        seconds = float(seconds)
        if self.state.silences.get(member) != seconds:
            self.state.silences[member] = seconds
            self.port.silence_announced(member, seconds)

    def _apply_confchg(
        self,
        members: list[Member],
        left: list[Member],
        joined: list[Member],
        merged: list[Member],
    ) -> None:
        st = self.state
        self.cpg_members = list(members)
        self.port.members_changed(list(members), left, joined)
        if self.merge_expect is not None:
            self.merge_expect &= set(members)  # a member lost mid-merge sends nothing
        gone = set(left)
        st.expelled -= gone  # it may come back: as a fresh member
        changed = False
        for lm in [lm for lm in st.members if (lm[0], lm[1]) in gone]:
            del st.members[lm]
            changed = True
        for lm in [lm for lm in self.fragments if (lm[0], lm[1]) in gone]:
            del self.fragments[lm]
        for m in gone:
            st.synced.discard(m)
            st.pending.pop(m, None)
            st.silences.pop(m, None)
        if changed:
            self._recompute()
        if merged:
            self._start_merge(members, joined, merged)
        # Members of a partition we merge with are not joiners: they have state.
        new = [j for j in joined if j != self.me and j not in merged]
        for j in new:
            snap = st.snapshot()
            snap["fragments"] = [[*lm, parts] for lm, parts in sorted(self.fragments.items())]
            snap["merge"] = self._merge_in_progress()
            st.pending[j] = snap
        if self.merge_expect is not None:
            self._finish_merge()
        # A new joiner gets its snapshot; after a departure (maybe of the old
        # leader) every still-pending joiner gets it again (duplicates are ignored).
        self._send_states(sorted(st.pending) if left else new)

    def _send_states(self, targets: list[Member]) -> None:
        """The leader (lowest synced member) sends pending joiners their snapshots."""
        st = self.state
        present = [m for m in sorted(st.synced) if m in self.cpg_members]
        if not present or present[0] != self.me:
            return
        for target in targets:
            if target in self.cpg_members and target in st.pending:
                body = msgpack.packb({"target": list(target), "snapshot": st.pending[target]})
                self.port.multicast(K_STATE, 0, BROADCAST, body)

    # -- expulsion of silent members -------------------------------------------

    def _on_expel(self, src: Member, victim: Member) -> None:
        """An EXPEL at its stream position: the same decision on every member.

        Only a member that holds the group's state may expel.
        """
        if src == victim or not self._has_state(src):
            return
        if self._mark_expelled(victim):
            self._after_expel(victim)

    def _has_state(self, m: Member) -> bool:
        """Whether process `m` holds the group's state: a synced one, or during
        a partition merge any member of the merging sides (each side counts
        only its own as synced until the MERGEs arrive)."""
        merging = self.merge_expect is not None and m in self.merge_members
        return m in self.state.synced or merging

    def _mark_expelled(self, m: Member) -> bool:
        """Drop process `m` from the state as if it had left; False if nothing to do."""
        st = self.state
        if m in st.expelled or m not in self.cpg_members:
            return False
        st.expelled.add(m)
        st.synced.discard(m)
        st.pending.pop(m, None)
        for lm in [lm for lm in st.members if (lm[0], lm[1]) == m]:
            del st.members[lm]
        for lm in [lm for lm in self.fragments if (lm[0], lm[1]) == m]:
            del self.fragments[lm]
        self.port.expel_applied(m)
        if self.merge_expect is not None:
            self.merge_expect.discard(m)
        return True

    def _after_expel(self, m: Member) -> None:
        if m == self.me:
            self.port.expelled()
            return
        self._recompute()
        if self.merge_expect is not None:
            self._finish_merge()
        # The expelled process may have been the leader a joiner waits for.
        self._send_states(sorted(self.state.pending))

    # -- founding the state anew ------------------------------------------------
    #
    # A joiner's state comes from the group's synced members. If every
    # process that was in the group before it joined is stopped (they were
    # all that held the state: the others died and restarted), nobody sends
    # it, and no synced member is left to expel them. So a joiner that has
    # heard none of them for the silence limit (the I/O shell's timing)
    # multicasts FOUND: the processes it saw in the group, and which of them
    # were older than itself. At FOUND's position every process decides the
    # same way whether it takes effect: when its sender still has no state.
    # Then the processes it saw, less the older ones, found the state
    # afresh (their logical members announce themselves again), and every
    # other process, every one that had state included, starts over as a
    # fresh member. A synced process knows whether the sender has state; a
    # joiner that FOUND lists sees everything since the sender wrote it, so
    # only a STATE, EXPEL or merge there could have changed that, and then
    # it starts over rather than guess (leaving is the same for everyone).

    def _peek_found(self, ev: Deliver) -> tuple[set[Member], set[Member]] | None:
        """(the processes a FOUND saw, the older ones among them), if `ev` is one."""
        msg = ev[1]
        if _kind(msg) != K_FOUND:
            return None
        body = cpg_control.body_or_none(cpg_control.FOUND, msg[HDR.size :])
        if body is None:
            return None
        return {(n, p) for n, p in body["members"]}, {(n, p) for n, p in body["older"]}

    def _joiner_found(self, seen: set[Member], older: set[Member]) -> None:
        founders = seen - older
        if self.me not in founders:
            self.port.start_over("another member founded the group's state anew without us")
            return
        if any(_may_give_state(ev) for ev in self.buffer[:-1]):
            self.port.start_over("a member founded the group's state anew, but may have had it")
            return
        present = founders & set(self.cpg_members)
        self.state = Agreed(synced=present, expelled=set(self.cpg_members) - present)
        self.synced = True
        self.buffer = []
        self.fragments = {}
        self.peek_fragments = {}
        log.warning(
            "%s: founded the group's state anew with %s, without %s (silent)",
            self.me,
            sorted(present),
            sorted(older),
        )
        self.port.founded()

    # -- partition merges ------------------------------------------------------
    #
    # When partitions that formed apart meet again, corosync lists the other
    # side's members as joined with reason NODEUP. Each side has its own
    # logical members and view ids, so at that position every synced member
    # multicasts its own logical members (MERGE). Once every expected MERGE
    # is delivered, all members hold the same union and install one view with
    # the same id: max of all sides' ids, plus one.

    def _start_merge(
        self, members: list[Member], joined: list[Member], merged: list[Member]
    ) -> None:
        fresh = {j for j in joined if j not in merged}
        st = self.state
        self.merge_members = {m for m in members if m not in fresh}
        # Our side's expelled processes send nothing; the other side learns
        # about them from our MERGE.
        self.merge_expect = self.merge_members - st.expelled
        self.merge_view_id = st.view_id
        self.merge_counts = {}
        self.merge_tag = _merge_tag(st, self.merge_members)
        mine = [[*lm, pnn] for lm, pnn in sorted(st.members.items()) if (lm[0], lm[1]) == self.me]
        body = msgpack.packb(
            {
                "tag": self.merge_tag,
                "merges": sorted(st.merges.items()),
                "members": mine,
                "view_id": st.view_id,
                "expelled": [list(m) for m in sorted(st.expelled)],
                "silence": st.silences.get(self.me),
            }
        )
        self.port.multicast(K_MERGE, 0, BROADCAST, body)

    def _merge_in_progress(self) -> dict[str, Any] | None:
        """What a joiner's snapshot says of a merge not yet complete at its
        join: the MERGEs still to come, the processes of the merging sides,
        the view ids and counts of merges the MERGEs so far brought.

        The joiner replays the rest of the merge from its buffer as every
        member does; without this it ignored the MERGEs, kept one side's
        members and reported views nobody else had (chaos, vs seed 1463: a
        node restarted during a partition merge reported view 19 as [0, 1]
        where the others installed [0, 1, 2], and Samba's pfetch read a
        persistent record 16 commits old there).
        """
        if self.merge_expect is None:
            return None
        return {
            "expect": [list(m) for m in sorted(self.merge_expect)],
            "members": [list(m) for m in sorted(self.merge_members)],
            "view_id": self.merge_view_id,
            "tag": self.merge_tag,
            "counts": sorted(self.merge_counts.items()),
        }

    def _resume_merge(self, merge: dict[str, Any] | None) -> None:
        if merge is None:
            return
        self.merge_expect = {(int(n), int(p)) for n, p in merge["expect"]}
        self.merge_members = {(int(n), int(p)) for n, p in merge["members"]}
        self.merge_view_id = int(merge["view_id"])
        self.merge_tag = merge["tag"]
        self.merge_counts = {str(key): int(n) for key, n in merge["counts"]}

    def _on_merge(self, src: Member, body: dict[str, Any]) -> None:
        if self.merge_expect is None or src not in self.merge_expect:
            return
        if body.get("tag") != self.merge_tag:
            return  # a MERGE for an earlier merge, sent late by a process that lagged
        st = self.state
        newly_expelled = False
        for n, p in body.get("expelled", []):
            if self._mark_expelled((n, p)):
                if (n, p) == self.me:
                    self.port.expelled()
                    return
                newly_expelled = True
        for n, p, lid, pnn in body["members"]:
            st.members[(n, p, lid)] = pnn
        self._silence(src, body.get("silence"))
        st.synced.add(src)
        self.merge_view_id = max(self.merge_view_id, int(body["view_id"]))
        for key, n in body.get("merges", []):
            self.merge_counts[str(key)] = max(self.merge_counts.get(str(key), 0), int(n))
        self.merge_expect.discard(src)
        self._finish_merge()
        if newly_expelled:
            self._send_states(sorted(st.pending))

    def _finish_merge(self) -> None:
        if self.merge_expect:
            return
        self.merge_expect = None
        st = self.state
        st.view_id = max(st.view_id, self.merge_view_id)
        for key, n in self.merge_counts.items():  # every side ends with every side's
            st.merges[key] = max(st.merges.get(key, 0), n)
        st.view = ()  # force a new view, the same one on every member
        self._recompute()

    def _recompute(self) -> None:
        if self.merge_expect is not None:
            return  # views wait until the merge completes
        st = self.state
        view = tuple(sorted(set(st.members.values())))
        if view == st.view:
            return
        st.view_id += 1
        st.view = view
        v = View(st.view_id, view)
        for lid in list(self.local):
            if lid in self.first_view_due:
                self.first_view_due.discard(lid)
                self._activate(lid, v)
            elif lid in self.active:
                self.port.new_view(lid, v, first=False)


def _merge_tag(st: Agreed, merging: set[Member]) -> list[Any]:
    """The name every side gives a merge alike: the processes that merge
    with state, and how many merges of the same processes each has seen,
    this one included.

    A process that was stopped across two merges of the same processes
    reads its backlog and sends its MERGE for the first while the second
    runs; taken for its MERGE of the second, its old view id made the sides
    install one membership under two view ids (explorer seeds 858, 1906).
    """
    names = sorted([n, p] for n, p in merging)
    key = msgpack.packb(names).hex()
    st.merges[key] = st.merges.get(key, 0) + 1
    return [names, st.merges[key]]


class _Quiet:
    """A port that does nothing: for trying a snapshot without effects (`Group._counts`)."""

    def multicast(self, kind: int, lid: int, dest: int, payload: bytes) -> None:
        pass

    def deliver(self, lid: int, src: int, payload: bytes) -> None:
        pass

    def new_view(self, lid: int, view: View, *, first: bool) -> None:
        pass

    def expelled(self) -> None:
        pass

    def start_over(self, why: str) -> None:
        pass

    def founded(self) -> None:
        pass

    def members_changed(
        self, members: list[Member], left: list[Member], joined: list[Member]
    ) -> None:
        pass

    def expel_applied(self, member: Member) -> None:
        pass

    def silence_announced(self, member: Member, seconds: float) -> None:
        pass


_QUIET = _Quiet()


def _may_give_state(ev: Event) -> bool:
    """Whether a joiner's buffered `ev` may have given a FOUND's sender state
    or expelled it: a STATE, EXPEL or MERGE, or a merge of partitions."""
    if len(ev) == 4:
        return bool(ev[3])
    return _kind(ev[1]) in (K_STATE, K_EXPEL, K_MERGE)


def _kind(msg: bytes) -> int | None:
    """A message's kind from its header; None if it is too short to have one."""
    return HDR.unpack_from(msg)[0] if len(msg) >= HDR.size else None
