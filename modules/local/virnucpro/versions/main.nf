// The software versions of the run as one YAML file (MultiQC's software_versions section).
// A task, not collectFile: when another sample fails (errorStrategy 'finish') Nextflow interrupts
// its operators, and collectFile interrupted while writing aborted the whole session, killing the
// EMBED tasks that 'finish' should let end. A task is simply not started then.
process VIRNUCPRO_VERSIONS {
    tag 'versions'
    label 'process_single'

    input:
    val yaml

    output:
    path 'virnucpro_software_mqc_versions.yml', emit: yml

    script:
    def quoted = yaml.readLines().collect { line -> "'" + line.replace("'", "'\\''") + "'" }.join(' ')
    """
    printf '%s\\n' ${quoted} > virnucpro_software_mqc_versions.yml
    """

    stub: // begins as the script's file may: a later run's start-up check knows it for the pipeline's
    """
    printf 'Workflow:\\n  virnucpro-pipeline: stub\\n' > virnucpro_software_mqc_versions.yml
    """
}
