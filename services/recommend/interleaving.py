"""Team-draft interleaving (Radlinski, Kurup and Joachims 2008) of two arms' ranked lists.

Each round, the arm that has contributed fewer items picks next (a fair coin decides ties); it contributes its
best-ranked item not yet in the list. The result records which arm contributed each item, so that a click,
watch or high rating on the item credits that arm; the arm with more credits wins for that user.
"""

from __future__ import annotations

import numpy as np

from services.recommend.logic import ServedList, lookup, request_rng


def team_draft(
    first: np.ndarray, second: np.ndarray, k: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Interleave two ranked id lists into at most ``k`` distinct ids: (ids, team) with team 0 for ``first``
    and 1 for ``second``. Sequential by nature (each pick depends on the last); k is a page, not a dataset."""
    lists = (np.asarray(first, dtype=np.int64), np.asarray(second, dtype=np.int64))
    cursors = [0, 0]
    counts = [0, 0]
    taken: set[int] = set()
    ids: list[int] = []
    teams: list[int] = []
    while len(ids) < k:
        coin = int(rng.integers(2))  # drawn every round: the same request interleaves the same way
        team = coin if counts[0] == counts[1] else int(counts[1] < counts[0])
        for turn in (team, 1 - team):  # the other arm picks when this one has nothing left
            candidates = lists[turn]
            while cursors[turn] < len(candidates) and int(candidates[cursors[turn]]) in taken:
                cursors[turn] += 1
            if cursors[turn] < len(candidates):
                movie = int(candidates[cursors[turn]])
                taken.add(movie)
                ids.append(movie)
                teams.append(turn)
                counts[turn] += 1
                break
        else:
            break  # both lists exhausted
    return np.asarray(ids, dtype=np.int64), np.asarray(teams, dtype=np.int64)


def interleave(
    served: list[ServedList], interleaving: tuple[str, tuple[str, str]], k: int, request_id: str
) -> tuple[ServedList, np.ndarray]:
    """The team-draft list of two arms' served lists, each item with the fields of the arm that contributed
    it, and that arm's name per item."""
    first, second = served
    ids, teams = team_draft(first.movie_ids, second.movie_ids, k, request_rng(request_id))
    in_first = teams == 0

    def pick(field: str, missing) -> np.ndarray:
        a = lookup(ids, first.movie_ids, np.asarray(getattr(first, field)), missing)
        b = lookup(ids, second.movie_ids, np.asarray(getattr(second, field)), missing)
        return np.where(in_first, a, b)

    _, (first_arm, second_arm) = interleaving
    combined = ServedList(
        movie_ids=ids,
        scores=pick("scores", np.float32(0)).astype(np.float32),
        channels=pick("channels", "").astype(object),
        because_ids=pick("because_ids", 0).astype(np.int64),
        because_by_text=pick("because_by_text", False).astype(bool),
        candidate_scores=np.concatenate([first.candidate_scores, second.candidate_scores]),
        user_genres=first.user_genres or second.user_genres,
        recall_answered=first.recall_answered and second.recall_answered,
        model_version=first.model_version or second.model_version,
    )
    return combined, np.where(in_first, first_arm, second_arm).astype(object)
