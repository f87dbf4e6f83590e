"""Tasks: a data set + models + loss + accuracy, named once (:mod:`.registry`, torch-free),
and what a run builds from one (:mod:`.build`): the data (the task's own, or a
researcher's ``"module:function"``), the model builder, the :class:`TaskLoss` and the
dry run of the model on one batch. Names are imported on first use."""

from fedp13n.utils.lazy import lazy_exports

_EXPORTS = {
    "TASKS": "fedp13n.tasks.registry",
    "TASK_NAMES": "fedp13n.tasks.registry",
    "TaskSpec": "fedp13n.tasks.registry",
    "get_task": "fedp13n.tasks.registry",
    "check_model_fits": "fedp13n.tasks.build",
    "client_data_pair": "fedp13n.tasks.build",
    "infer_num_classes": "fedp13n.tasks.build",
    "load_task_data": "fedp13n.tasks.build",
    "load_user_data": "fedp13n.tasks.build",
    "model_builder": "fedp13n.tasks.build",
    "task_loss": "fedp13n.tasks.build",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
