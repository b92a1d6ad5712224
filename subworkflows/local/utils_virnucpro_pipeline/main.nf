// Start-up checks of the pipeline and the functions the workflows share: parameter validation, the
// sample channel built from --input (files, a glob, or a samplesheet), the versions YAML.

include { paramsSummaryLog; samplesheetToList; validateParameters } from 'plugin/nf-schema'

workflow PIPELINE_INITIALISATION {
    take:
    validate_params // boolean: check every parameter against nextflow_schema.json
    input           // string: FASTA/FASTQ files or a glob (one sample each), or a samplesheet
    models          // string: models directory, or null (tiny models or the download step)

    main:
    if (validate_params) {
        validateParameters()
    }
    log.info(paramsSummaryLog(workflow))

    if (models) {
        checkModelsDirectory(models)
    }

    def ch_samples = isSamplesheet(input) ? samplesFromSamplesheet(input) : samplesFromFiles(input)

    emit:
    samples = ch_samples // channel: [ val(meta), [ reads ] ]
}

// A samplesheet is recognised by its extension; anything else is a file name or a glob.
def isSamplesheet(String input) {
    return input ==~ /(?i).*\.(csv|tsv|ya?ml|json)$/
}

// One sample per samplesheet `sample`; its rows (one file each) are the sample's input files.
def samplesFromSamplesheet(String samplesheet) {
    return channel
        .fromList(samplesheetToList(samplesheet, "${projectDir}/assets/schema_input.json"))
        .map { meta, reads -> [meta.id, reads] }
        .groupTuple()
        .map { id, reads -> [[id: id], reads] }
}

// One sample per file, named after the file without its FASTA/FASTQ and compression extensions.
def samplesFromFiles(String pattern) {
    return channel
        .fromPath(pattern, checkIfExists: true)
        .map { reads -> [[id: sampleIdFromPath(reads)], [reads]] }
        .toSortedList { a, b -> a[0].id <=> b[0].id }
        .flatMap { rows -> checkUniqueSampleIds(rows) }
}

def sampleIdFromPath(reads) {
    return reads.name
        .replaceFirst(/(?i)\.(gz|bz2)$/, '')
        .replaceFirst(/(?i)\.(fa|fasta|fna|fas|ffn|fq|fastq)$/, '')
}

def checkUniqueSampleIds(List rows) {
    def duplicated = rows.countBy { row -> row[0].id }.findAll { _id, n -> n > 1 }.keySet()
    if (duplicated) {
        error("Input files ${duplicated.join(', ')} give the same sample name; rename them or use a samplesheet (--input samples.csv)")
    }
    return rows
}

def checkModelsDirectory(String models) {
    def dir = file(models, checkIfExists: true)
    if (!dir.isDirectory()) {
        error("--models ${models} is not a directory (expected the layout written by `virnucpro models download`)")
    }
}

// EMBED checkpoints go next to the work directory when that is a filesystem path the tasks can
// write (local disk, NFS, Lustre, GPFS); on object storage (s3://, gs://) there is no default and
// the CLI keeps them inside the task directory (set --checkpoint_dir to a mounted path instead).
def defaultCheckpointDir(work_dir) {
    return work_dir.toUri().getScheme() == 'file' ? "${work_dir}/virnucpro-checkpoints" : ''
}

// The versions topic ([process, tool, version] tuples) as YAML: one block per process, sorted.
def versionsToYaml(List rows) {
    def lines = []
    rows.groupBy { row -> row[0].tokenize(':').last() }.sort().each { process, processRows ->
        lines << "${process}:".toString()
        processRows.collect { row -> "  ${row[1]}: ${row[2]}".toString() }.unique().sort().each { line -> lines << line }
    }
    lines << 'Workflow:'
    lines << "  Nextflow: ${workflow.nextflow.version}".toString()
    lines << "  virnucpro-pipeline: ${workflow.manifest.version}".toString()
    return lines.join('\n')
}
