"""Scoring plans run on fixed per-bucket buffers, captured as CUDA graphs (model.scoring_graphs).

A small model's forward is host work: launching a few hundred kernels costs more than they run (the
135M real model: about 12 ms of host time a forward for a few ms of GPU work). A graph captured once
per bucket (scoring_plan.Plan.shape) replays the whole forward, the log-prob picks included, in one
launch. A replay reads the weights' storage, which every sweep updates in place, so it always scores
the current (perturbed) weights. Code that rebinds a weight instead (`param.data = param.data + ...`, as
princeton-nlp/MeZO's loop does) leaves a graph reading the old storage: with `storage` given, the scorer
compares the weights' addresses with those at capture before every replay (about 30 us for 272 tensors)
and, when one moved, drops its graphs and captures again (graph == eager holds either way).

The backend gives, per bucket, a Slot: the device buffers a plan is copied into and `run()`, which
computes every pick's log-prob from them. With capture off, or where a capture fails (one warning, then
eager for the rest of the run), `run()` is called directly: the same function on the same shapes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from mezo_elastic.runners.scoring_plan import Plan

log = logging.getLogger(__name__)
MAX_GRAPHS = 32  # buckets captured per runner; later buckets run eagerly (each graph keeps its pool)


@dataclass
class Slot:
    """Device buffers of one bucket and the forward over them."""

    ids: torch.Tensor  # written with the plan's token ids (any shape holding rows x width elements)
    picks: torch.Tensor  # [3, picks] int64: row, position, target
    run: Callable[[], torch.Tensor]  # -> [picks] float32 log-probs, from the buffers
    refresh: Callable[[], None] = lambda: None  # before every run: state shared with other forwards
    keep: Any = None  # whatever the buffers belong to (an SGLang batch), alive as long as the slot
    graph: Any = None
    out: torch.Tensor | None = None
    last_plan: Plan | None = field(default=None, repr=False)


class GraphScorer:
    """Runs Plans through per-bucket Slots made by `make_slot(shape)`; captures each slot's forward
    as a CUDA graph when `capture` (the first plan of a bucket pays for the capture)."""

    def __init__(self, make_slot: Callable[[tuple[int, int, int]], Slot], device: torch.device, capture: bool,
                 storage: Callable[[], tuple] | None = None) -> None:
        self.make_slot, self.device, self.storage = make_slot, device, storage
        self.capture = capture and device.type == "cuda"
        self.slots: dict[tuple[int, int, int], Slot] = {}
        self.replays = 0  # forwards that replayed a captured graph (tests check the graphs really run)
        self.recaptures = 0  # times the weights' storage moved and the graphs were dropped
        self._pool = torch.cuda.graph_pool_handle() if self.capture else None
        self._captured_storage: tuple | None = None  # storage() when the current graphs were captured

    @torch.no_grad()
    def logprobs(self, plan: Plan) -> torch.Tensor:
        """Every pick's log-prob (float32, CPU, the bucket's length) for `plan`: one host sync."""
        slot = self.slots.get(plan.shape)
        if slot is None:
            slot = self.slots[plan.shape] = self.make_slot(plan.shape)
        last = slot.last_plan
        if last is not plan and (last is None or last.key != plan.key):  # MeZO's second forward: no copy
            slot.ids.copy_(plan.ids.reshape(slot.ids.shape))
            slot.picks.copy_(plan.picks)
        slot.last_plan = plan
        slot.refresh()
        if self._captured_storage is not None and self.storage() != self._captured_storage:
            self._drop_graphs()
        if slot.graph is None and self.capture and sum(s.graph is not None for s in self.slots.values()) < MAX_GRAPHS:
            self._capture(slot)
        if slot.graph is not None:
            slot.graph.replay()
            self.replays += 1
            return slot.out.cpu()
        return slot.run().cpu()

    def _drop_graphs(self) -> None:
        """The weights were rebound since the graphs were captured: every graph reads freed or stale
        storage, so all of them go (their buffers stay) and each bucket captures again when next used."""
        torch.cuda.synchronize(self.device)
        for s in self.slots.values():
            s.graph, s.out = None, None
        self._pool = torch.cuda.graph_pool_handle()
        self._captured_storage = None
        self.recaptures += 1
        if self.recaptures == 1:
            log.info("model.scoring_graphs: the weights' storage moved since the capture (a weight was rebound, "
                     "not updated in place); the graphs are captured again")

    def _capture(self, slot: Slot) -> None:
        """Warm up on a side stream (lazy initialisations stay out of the graph), then capture."""
        try:
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(2):
                    slot.run()
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool):
                out = slot.run()
            slot.graph, slot.out = graph, out
            if self.storage is not None and self._captured_storage is None:
                self._captured_storage = self.storage()
        except Exception as e:  # an op that cannot be captured: this run scores eagerly from here on
            log.warning("model.scoring_graphs: capturing the scoring forward failed (%s: %s); scoring runs "
                        "without CUDA graphs (same results, more host time a forward)", type(e).__name__,
                        str(e).splitlines()[0] if str(e) else "")
            self.capture = False
            torch.cuda.synchronize(self.device)

    def close(self) -> None:
        """Drop every graph and buffer (their memory goes back to torch's cache)."""
        self.slots.clear()
        self._pool = None
