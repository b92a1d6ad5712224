#!/bin/sh
# Stop a task whose virnucpro is not the pipeline's own version: exit 5, one message.
#
#     require_virnucpro.sh VERSION
#
# The modules pass the options of, and hand on the stage files of, the virnucpro released with the
# pipeline. Another one (an install on the PATH upgraded, or older than the pipeline's checkout) may
# refuse an option, write files the next stage refuses, or compute differently, and Nextflow's task
# keys do not see it: each task calls this with the pipeline's version, which also puts that version
# in the task's script, so a -resume never reuses a task of another pipeline version. POSIX sh only.
set -u
wanted="virnucpro $1"
if ! command -v virnucpro > /dev/null 2>&1; then
    echo "error: this pipeline runs virnucpro $1, but the task finds no virnucpro on its PATH ($PATH)" >&2
    echo "  fix: install virnucpro $1 where the tasks run, or use a container profile (-profile docker, singularity or apptainer)" >&2
    exit 127
fi
found=$(virnucpro --version) || exit $?
[ "$found" = "$wanted" ] && exit 0
# the pipeline of the version found: its release, or, for a development version (never released),
# the checkout it was installed from (main holds only the latest development version)
other=${found#virnucpro }
case "$other" in
    *dev*) pipeline="nextflow run on the checkout virnucpro $other was installed from; -r main is only the latest development version" ;;
    *) pipeline="nextflow run virnucpro/virnucpro -r $other" ;;
esac
echo "error: this pipeline runs $wanted, but the task found $found ($(command -v virnucpro))" >&2
echo "  fix: install virnucpro $1 where the tasks run (\`pip install .\` in a checkout of the pipeline at $1), use a container profile (-profile docker, singularity or apptainer), or run the pipeline that matches virnucpro $other ($pipeline)" >&2
exit 5
