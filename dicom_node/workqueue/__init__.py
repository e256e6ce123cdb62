"""The one durable work queue of the node (see :mod:`dicom_node.workqueue.queue`).

Kinds registered by the composition root (:mod:`dicom_node.node`):

========== ============================================ =================================
kind       ref                                          handler
========== ============================================ =================================
job        jobs.id                                      dicom_node.jobs.worker.SeriesJobHandler
delivery   jobs.id (its result objects, every dest.)    dicom_node.jobs.worker.DeliveryHandler
invocation invocations.id (the request UUID)            dicom_node.invocations.InvocationHandler
webhook    invocations.id                               dicom_node.invocations.WebhookHandler
retrieval  sessions.id                                  dicom_node.sources.sessions._RetrievalHandler
========== ============================================ =================================

``invocation`` and ``webhook`` are registered when the REST front end starts (it supplies the
model runner), so they are added to a running queue; until then their rows wait.
"""

from dicom_node.workqueue.item import DeadLetter, Done, Failed, Handler, Outcome, Retry, WorkItem
from dicom_node.workqueue.queue import WorkQueue

__all__ = ["DeadLetter", "Done", "Failed", "Handler", "Outcome", "Retry", "WorkItem", "WorkQueue"]
