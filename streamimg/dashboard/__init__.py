"""The ``/streamimg`` page of the Dask dashboard: what each daemon reports, and the page.

Data flow: each daemon's :class:`DashboardReporter` (a listener) stores a snapshot on
the Dask scheduler once a second; :class:`StreamimgPage` (a scheduler plugin the
daemon registers) serves ``/streamimg`` from those snapshots on the dashboard's port.
"""

from streamimg.dashboard.page import StreamimgPage
from streamimg.dashboard.reporter import DashboardReporter

__all__ = ["DashboardReporter", "StreamimgPage"]
