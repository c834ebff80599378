"""Item embeddings in Milvus: a milvus-lite file by default, a Milvus server by URI in Kubernetes.

One collection per (embedding method, artifact version), so publishing a new model never changes vectors
under a running search: :meth:`VectorIndex.sync` builds the new collection, then drops older ones.
"""

from __future__ import annotations

import logging
import re
import warnings

import numpy as np

with warnings.catch_warnings():  # milvus-lite 2.5 imports pkg_resources
    warnings.simplefilter("ignore")
    from pymilvus import DataType, MilvusClient

log = logging.getLogger("starling.recall.index")

INSERT_CHUNK = 10_000
MAX_LIMIT = 16_384  # Milvus's top-k limit


def collection_name(method: str, version: str) -> str:
    return "starling_items_" + re.sub(r"[^0-9A-Za-z_]", "_", f"{method}_{version}")


class VectorIndex:
    def __init__(self, uri: str, method: str, version: str) -> None:
        self.client = MilvusClient(uri)
        self.method = method
        self.name = collection_name(method, version)

    def sync(self, movie_ids: np.ndarray, vectors: np.ndarray) -> None:
        """Make this version's collection hold exactly these vectors (reuse it if already complete)."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if self.client.has_collection(self.name):
            rows = int(self.client.get_collection_stats(self.name).get("row_count", 0))
            if rows == len(movie_ids):
                self.client.load_collection(self.name)
                self._drop_other_versions()
                return
            self.client.drop_collection(self.name)
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("movie_id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=vectors.shape[1])
        index = self.client.prepare_index_params()
        index.add_index(field_name="vector", index_type="FLAT", metric_type="IP")
        self.client.create_collection(self.name, schema=schema, index_params=index)
        for start in range(0, len(movie_ids), INSERT_CHUNK):
            ids, vecs = movie_ids[start : start + INSERT_CHUNK], vectors[start : start + INSERT_CHUNK]
            rows = [{"movie_id": int(i), "vector": v} for i, v in zip(ids.tolist(), vecs, strict=True)]
            self.client.insert(self.name, rows)
        self.client.flush(self.name)
        self.client.load_collection(self.name)
        self._drop_other_versions()
        log.info("indexed vectors", extra={"collection": self.name, "rows": len(movie_ids)})

    def upsert(self, movie_ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add or replace vectors (new movies at serving time); searchable at once."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        rows = [{"movie_id": int(i), "vector": v} for i, v in zip(movie_ids.tolist(), vectors, strict=True)]
        self.client.upsert(self.name, rows)

    def _drop_other_versions(self) -> None:
        prefix = collection_name(self.method, "")
        for other in self.client.list_collections():
            if other.startswith(prefix) and other != self.name:
                self.client.drop_collection(other)

    def search(
        self, queries: np.ndarray, limit: int, timeout: float | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Inner-product top-``limit`` for each query row: (movie ids [q, <=limit], scores [q, <=limit]).

        Rows shorter than ``limit`` (tiny catalogs) are padded with id -1 and score -inf.
        """
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        limit = max(1, min(limit, MAX_LIMIT))
        hits = self.client.search(
            self.name, data=list(queries), limit=limit, timeout=timeout, search_params={"metric_type": "IP"}
        )
        ids = np.full((len(queries), limit), -1, dtype=np.int64)
        scores = np.full((len(queries), limit), -np.inf, dtype=np.float32)
        for row, hit in enumerate(hits):  # one iteration per query vector (at most a handful)
            ids[row, : len(hit.ids)] = hit.ids
            scores[row, : len(hit.distances)] = hit.distances
        return ids, scores

    def close(self) -> None:
        self.client.close()


def neighbour_table(
    index: VectorIndex, movie_ids: np.ndarray, vectors: np.ndarray, k: int, batch: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """Each movie's ``k`` nearest other movies, by batched searches of the index (done once, at start-up).

    Returns (neighbour ids [movies, k], scores [movies, k]); -1 / -inf pad rows with fewer neighbours.
    Item-to-item recall then costs a table lookup per request instead of a search.
    """
    ids = np.full((len(movie_ids), k), -1, dtype=np.int64)
    scores = np.full((len(movie_ids), k), -np.inf, dtype=np.float32)
    for start in range(0, len(movie_ids), batch):  # one search per batch of query vectors
        found, found_scores = index.search(vectors[start : start + batch], k + 1)
        itself = found == movie_ids[start : start + batch, None]
        # drop each movie itself (normally its own first hit), keep the next k
        order = np.argsort(itself, axis=1, kind="stable")[:, :k]
        ids[start : start + batch] = np.take_along_axis(found, order, axis=1)
        scores[start : start + batch] = np.take_along_axis(found_scores, order, axis=1)
    return ids, scores
