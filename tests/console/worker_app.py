"""The parcels workflow for ``actorflow worker tests.console.worker_app:workflow``, on the
SQLite file named by ``PARCELS_DB`` (the browser test starts a real worker with it)."""

from __future__ import annotations

import os

import actorflow as af

from .conftest import Parcel, Shipment, build_parcels


def workflow() -> af.Workflow[Shipment, Parcel]:
    return build_parcels(af.SQLiteStore(os.environ["PARCELS_DB"]))
