"""Records over a virtually synchronous transport: one ordered stream, no replies.

Every write, lock request, unlock and commit is broadcast as an `Ordered`
message; every node applies the stream in the same agreed order, so every
node holds the same records and the same lock queues, and nobody needs to
ask anybody anything. The node that sent an operation answers its client
when it delivers its own message: by then every surviving member has it (or,
if the sender fails first, no survivor does).

Locks are FIFO queues of owners `(pnn, session id)`, identical everywhere:
the head holds the lock. A queue is bounded (MaxLockWaiters): a lock request
or a write that would queue past it fails with BUSY. Queues are replicated
state, so that decision is taken where it can be the same everywhere: at
apply time, against the bound the origin put in the message. Deciding at
the origin before broadcasting could not be exact (other nodes' requests
already in the stream are not applied there yet), and each member applying
its own tunable would let members that set it differently disagree on a
queue. When a client disconnects its node broadcasts a
release; when a node leaves the view every member drops its owners at the
same position in the stream, so lock hand-over after a failure needs no
recovery round.

Joins are the only event needing data: at a view change that adds members,
every member broadcasts an offer (is it in sync? which databases at which
sequence numbers?). Once all offers of the view are delivered each node
computes the same plan: each database comes from the lowest in-sync member
holding it, or, when nobody is in sync (the whole cluster restarted, quorum
was lost), from the freshest copy (`merge.freshest_copy`: the highest epoch,
then a copy whose files saw no failed write, then the longest part of the
epoch's stream applied, then the highest sequence number; for a persistent
database the sequence number comes right after the epoch). Sources
broadcast a snapshot taken at that position; members that need it queue
later operations until the snapshot is applied. Each member also says it
numbered the plan's epoch (`numbered`): the epoch begins, and the round
ends, only once every member did, so that no later round numbers it again
for another history (`rounds.on_numbered`); so does a view change without a
round, where the members in sync go on serving meanwhile. Quorum (a
majority of configured nodes) is enforced here because CPG does not: a
member of a minority view is out of sync and serves nothing.

Agreed delivery at the origin does not mean every member has the message:
if the origin fails (or is cut off) right after delivering its own write,
the survivors may never see it. So a persistent commit (and a wipe) is
acknowledged to its client only once it is stable: every other member of
the view has applied it and said so (an `applied` message every member
broadcasts, one per burst, naming the highest seq it applied of each
origin), or left a view that keeps quorum (virtual synchrony: a survivor of
the view change delivered what we did), as long as the members that still
hold it are a majority of the cluster (otherwise a later state transfer
must first give it to others: a majority that goes on without its holders
would not have it). A view without quorum fails what is
not yet stable. Since every member knows what is stable, no local read
returns a write that is not (`settled`): it waits until it is, within
CallTimeout. A state transfer carries which keys are not stable yet, and
once every member said it installed the snapshots it needed (`synced`),
what anyone held before the plan is stable (`_plan_done`).

A volatile write (store, store_unlock, a record call) is acknowledged on
its agreed delivery at the origin, and may be lost with its origin, as a
volatile record is lost with its dmaster in CTDB and in the tcp engine:
the same semantics on both transports, at the cost of one delivery. The
tunable StableVolatileWrites=1 makes the origin ask for stability in the
message (`"stable"`), so that every member treats the write alike: it then
survives the loss of any single node, for one more broadcast round per
burst (measured in bench.foundation: store 2.2x slower with one client).

The package: `engine.py` (the engine: client operations; `waits.py`,
what they wait for), `applier.py`
(the stream's side: delivered operations and views applied in order),
`requests.py` (this node's operations in the stream until they are
delivered), `rounds.py` (view changes and state-transfer rounds),
`replica.py` (the replicated state), `local_clients.py` (what this node's
clients hold in it), `barriers.py` (linearizable reads), `stability.py`
(which writes every member holds), `sync.py` (the state-transfer plan, a
pure function of the offers) and `locks.py` (the replicated lock queues).
A client's operation (`engine.py`, `reads.py`) is a flow that yields what
it waits for (`waits.py`), and so is lending records to Samba's clients
(`samba_grants.py`, `samba_returns.py`).
`requests`, `stability`, `barriers` and `local_clients` hold no futures
and no timers; they answer whoever waits by key through
`ctdb.engines.answers`, into the engine's `Waiting`, which keeps each
answer until the flow waiting for it reads it.

Every client request ends within CallTimeout, with its result or an error;
a node whose local apply fails (I/O error, disk full) leaves the group and
rejoins through a state transfer instead of carrying on diverged.
"""
