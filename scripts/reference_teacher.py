"""Print the path of the reference teacher's model package, training it first if it is not cached."""

from edgekit import api
from edgekit.cli.common import epoch_progress

with epoch_progress("reference teacher") as progress:
    print(api.reference_teacher(progress))
