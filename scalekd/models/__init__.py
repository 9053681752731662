"""Models: the student factory and the frozen teacher."""

from scalekd.models.student import create_student, data_config
from scalekd.models.teacher import FrozenTeacher, create_teacher

__all__ = ["create_student", "data_config", "FrozenTeacher", "create_teacher"]
