// Render the run's MultiQC custom content (the summary table, software versions) as one HTML report.
process MULTIQC {
    tag 'multiqc'
    label 'process_single'
    container 'quay.io/biocontainers/multiqc:1.35--pyhdfd78af_0'

    input:
    path multiqc_files, stageAs: '?/*'
    path multiqc_config

    output:
    path 'multiqc_report.html', emit: report
    path 'multiqc_report_data', emit: data
    tuple val("${task.process}"), val('multiqc'), eval('multiqc --version | sed "s/.* //"'), emit: versions_multiqc

    script:
    def args = task.ext.args ?: ''
    """
    multiqc --force --no-ansi --config ${multiqc_config} --filename multiqc_report.html ${args} .
    """

    stub:
    """
    mkdir multiqc_report_data
    echo 'MultiQC report (stub)' > multiqc_report.html
    """
}
