// One run-level table from every sample's summary row (bin/virnucpro_summary.py merge): sequences,
// chunks, ORFs, calls and whether the counts reconcile (a sample that does not fails the step), plus
// the same table as MultiQC custom content. `samples` names every sample of the run: one whose task
// failed and was ignored (errorStrategy 'ignore') is listed as without results, never left out.
process VIRNUCPRO_SUMMARY {
    tag 'summary'
    label 'process_single'

    input:
    path rows
    val samples

    output:
    path 'virnucpro_summary.tsv', emit: summary
    path 'virnucpro_summary_mqc.tsv', emit: multiqc
    tuple val("${task.process}"), val('python'), eval('python3 -c "import platform; print(platform.python_version())"'), emit: versions_python

    script:
    """
    virnucpro_summary.py merge \\
        ${rows} \\
        --samples ${samples.join(' ')} \\
        --out virnucpro_summary.tsv \\
        --mqc virnucpro_summary_mqc.tsv
    """

    stub:
    """
    printf 'sample\\n' > virnucpro_summary.tsv
    printf 'sample\\n' > virnucpro_summary_mqc.tsv
    """
}
