// Start-up checks of the pipeline and the functions the workflows share: parameter validation, the
// sample channel built from --input (files, a glob, or a samplesheet), the versions YAML.

include { samplesheetToList } from '../utils_schema'

workflow PIPELINE_INITIALISATION {
    take:
    input           // string: FASTA/FASTQ files or a glob (one sample each), or a samplesheet
    models          // string: models directory, or null (tiny models or the download step)

    main:
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
    def rows = samplesheetToList(samplesheet, "${projectDir}/assets/schema_input.json")
    checkReservedSampleNames(rows.collect { row -> row[0].id }, "in ${samplesheet}")
    return channel
        .fromList(rows)
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
        .replaceFirst(/(?i)\.(gz|bz2|xz)$/, '')
        .replaceFirst(/(?i)\.(fa|fasta|fna|fas|ffn|fq|fastq)$/, '')
}

def checkUniqueSampleIds(List rows) {
    def duplicated = rows.countBy { row -> row[0].id }.findAll { _id, n -> n > 1 }.keySet()
    if (duplicated) {
        error("Several input files give the sample name ${duplicated.join(', ')}; rename them or use a samplesheet (--input samples.csv)")
    }
    checkReservedSampleNames(rows.collect { row -> row[0].id }, 'from the input file names')
    return rows
}

// Sample results go to <outdir>/<sample>/ beside the run's own folders: a sample may not take their names.
def checkReservedSampleNames(List ids, String where) {
    def reserved = ids.findAll { id -> id in ['pipeline_info', 'multiqc'] }.unique()
    if (reserved) {
        error("Sample name ${reserved.join(', ')} ${where} is reserved for the run's own results folder; rename the sample")
    }
}

def checkModelsDirectory(String models) {
    def dir = file(models, checkIfExists: true)
    if (!dir.isDirectory()) {
        error("--models ${models} is not a directory (expected the layout written by `virnucpro models download`)")
    }
}

// Under the slurm profile, a --slurm_queue or --slurm_gpu_queue naming a partition SLURM does not
// have stops the run at once, naming the parameter (sbatch would refuse every task). Skipped
// where scontrol cannot be run (a launch host outside the cluster).
def checkSlurmQueues(Map queues) {
    if (!workflow.profile.tokenize(',').contains('slurm')) {
        return
    }
    queues.each { name, queue ->
        if (!queue) {
            return
        }
        def unknown = []
        try {
            unknown = queue.toString().tokenize(',').findAll { part -> ['scontrol', 'show', 'partition', part].execute().waitFor() != 0 }
        }
        catch (IOException e) {
            log.warn("--${name} not checked (${e.message})")
        }
        if (unknown) {
            error("--${name} '${queue}': SLURM has no partition ${unknown.join(', ')}; `sinfo -s` lists the partitions you may use")
        }
    }
}

// EMBED checkpoints: --checkpoint_dir, else next to the work directory when that is a filesystem
// path the tasks can write (local disk, NFS, Lustre, GPFS); on object storage (s3://, gs://) there is
// no default and the CLI keeps them inside the task directory (set --checkpoint_dir to a mounted
// path instead). The folder is made here, as the user, before any container mounts it (Docker
// would create a missing one owned by root).
def checkpointDir(String requested, work_dir) {
    def dir = requested ?: (work_dir.toUri().getScheme() == 'file' ? "${work_dir}/virnucpro-checkpoints" : '')
    if (dir) {
        file(dir).mkdirs()
    }
    return dir
}

// The classifier files PREDICT needs from a models directory: the classifier for the chunk size
// and the manifest that pins its checksum, or the standard file name in a hand-staged directory.
def classifierFiles(models_dir, chunk_size) {
    def manifest = models_dir.resolve('manifest.json')
    if (!manifest.exists()) {
        return [models_dir.resolve("${chunk_size}_model.pth")]
    }
    def entry = new groovy.json.JsonSlurper().parseText(manifest.text).models["classifier_${chunk_size}"]
    if (!entry) {
        error("${models_dir} has no classifier for --chunk_size ${chunk_size} (see `virnucpro models check ${models_dir}`)")
    }
    return [manifest] + entry.files.collect { name -> models_dir.resolve(name) }
}

// The versions ([process, tool, version] tuples) as YAML: one block per process, sorted.
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
