// One run-level table from every sample's summary row (bin/virnucpro_summary.py merge): sequences,
// chunks, ORFs, calls and whether the counts reconcile (a sample that does not fails the step), plus
// the same table as MultiQC custom content. `samples` names every sample of the run: one whose task
// failed and was ignored (errorStrategy 'ignore') is listed as without results, never left out.
// The rows come in one folder and the ids in a file (printf is a shell builtin): a run of any number
// of samples stays within the kernel's limit on one command's arguments. The script and the Python
// version probe run in virnucpro's own interpreter (bin/virnucpro_python): the PATH may have no python3,
// or an older one, where virnucpro is installed with an interpreter of its own (pipx).
process VIRNUCPRO_SUMMARY {
    tag 'summary'
    label 'process_single'

    input:
    path rows, stageAs: 'rows/*'
    val samples

    output:
    path 'virnucpro_summary.tsv', emit: summary
    path 'virnucpro_summary_mqc.tsv', emit: multiqc
    tuple val("${task.process}"), val('python'), eval('virnucpro_python -c "import platform; print(platform.python_version())"'), emit: versions_python

    script:
    """
    mkdir -p rows
    printf '%s\\n' ${samples.join(' ')} > samples.txt
    virnucpro_python virnucpro_summary.py merge \\
        rows \\
        --samples-from samples.txt \\
        --out virnucpro_summary.tsv \\
        --mqc virnucpro_summary_mqc.tsv
    """

    stub:
    """
    printf 'sample\\n' > virnucpro_summary.tsv
    printf 'sample\\n' > virnucpro_summary_mqc.tsv
    """
}
