"""Relays the outbox to Redis: order events to the stream, menu changes to the item-list cache.

At least once and in id order (one relay at a time, under an advisory lock): rows are deleted
in the transaction that read them, after Redis took them (with ZAPORA_REDIS_WAIT_REPLICAS:
after that many replicas have them), so a failure anywhere leaves them for the next pass. Two
changes of one order are serialised by its row lock, so their rows' ids follow their commit
order. Consumers must tolerate a repeated event: order events carry their `outbox_id` (the
consumer records each once) and the order's `version`."""

from __future__ import annotations

from typing import Any

from loguru import logger

from zapora.infra.metrics import OUTBOX_RELAYED
from zapora.infra.redis import NotReplicatedError
from zapora.repositories import outbox as repo
from zapora.services.context import Infra

ORDER_EVENT = "order-event"
MENU_CHANGED = "menu-changed"
BATCH = 200


class OutboxRelay:
    def __init__(self, infra: Infra) -> None:
        self.infra = infra

    async def relay_once(self) -> int:
        """Relay one batch; the number of rows relayed (0 when idle or another relay runs)."""
        from zapora.services.menus import CACHE_KEY, EPOCH_FIELD, INVALIDATION_CHANNEL

        settings = self.infra.settings
        async with self.infra.db.transaction() as conn:
            if not await repo.try_relay_lock(conn):
                return 0
            rows = await repo.oldest(conn, BATCH)
            if not rows:
                return 0
            menu_changed = False
            async with self.infra.redis.pipeline(transaction=False) as pipe:
                for row in rows:
                    if row["topic"] == ORDER_EVENT:
                        fields: dict[Any, Any] = {**row["payload"], "outbox_id": str(row["id"])}
                        pipe.xadd(
                            settings.order_stream,
                            fields,
                            maxlen=1_000_000,
                            approximate=True,
                        )
                    elif row["topic"] == MENU_CHANGED:
                        menu_changed = True
                    else:
                        logger.warning(
                            "outbox row {} has unknown topic {}", row["id"], row["topic"]
                        )
                if menu_changed:
                    # One epoch bump and one message stand for every menu change in the batch.
                    pipe.hincrby(CACHE_KEY, EPOCH_FIELD, 1)
                    pipe.publish(INVALIDATION_CHANNEL, b"invalidate")
                waits = self.infra.redis.wait_replicas
                if waits:
                    # WAIT on the pipeline's own connection counts the replicas that have
                    # every write above (a pipeline does not go through execute_command).
                    pipe.execute_command("WAIT", waits, self.infra.redis.wait_timeout_ms)
                replies = await pipe.execute()
            if waits and int(replies[-1]) < waits:
                # The rows stay (the transaction rolls back) and go again next pass; the
                # consumer records a row relayed twice once (its outbox id).
                raise NotReplicatedError(
                    f"outbox rows {rows[0]['id']}..{rows[-1]['id']} reached {replies[-1]} of"
                    f" {waits} replicas in {self.infra.redis.wait_timeout_ms} ms"
                )
            await repo.delete_upto(conn, [row["id"] for row in rows])
        for row in rows:
            OUTBOX_RELAYED.labels(row["topic"]).inc()
        return len(rows)
