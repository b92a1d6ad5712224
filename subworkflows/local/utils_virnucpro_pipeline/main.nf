// Start-up checks of the pipeline and the functions the workflows share: parameter validation, the
// sample channel built from --input (files, a glob, or a samplesheet), the versions YAML.

include { notFileProblems ; samplesheetToList ; unnamablePath ; unnamablePathCause ; unnamablePathFix ; unreadableMatches } from '../utils_schema'

workflow PIPELINE_INITIALISATION {
    take:
    input           // string: FASTA/FASTQ files or a glob (one sample each), or a samplesheet
    outdir          // string: --outdir, where each sample's results go (<outdir>/<sample>/)
    run_start       // string: the run's start time, as in the names of its reports
    publishes       // map: whether this run publishes MultiQC's report, prepared/ and embeddings/, and whether as symbolic links (booleans)
    run_folders     // map: the folders the run keeps for itself ([checkpoint: path or '', work: path]), as text

    main:
    def sample_list = isSamplesheet(input) ? samplesFromSamplesheet(input) : samplesFromFiles(input)
    def ids = sample_list.collect { sample -> sample[0].id }
    refuseCommandOutputs(outdir, ids)
    refuseSamplesOverRunFolders(outdir, ids, run_folders)
    refuseStaleOutputs(outdir, ids, publishes)
    refuseForeignPublishTargets(outdir, ids, publishes)
    warnEarlierSamples(outdir, ids)
    writeInputsTable(outdir, run_start, sample_list)
    def ch_samples = channel.fromList(sample_list)

    emit:
    samples = ch_samples // channel: [ val(meta), [ reads ] ]
}

// Words of the command line that no option takes (Nextflow hands them to the pipeline as `args`):
// an unquoted glob (`--input data/*.fa`) is expanded by the shell, --input takes the first file and
// the others land here. Ignored, their records would be missing from a run that ends well: refused.
// Nextflow 24.10 itself adds the word 'true' after -stub-run (or -stub): not the user's, left out.
def refuseUnusedArguments(List given) {
    def arguments = workflow.stubRun ? given - ['true'] : given
    if (arguments) {
        def shown = arguments.take(5).collect { word -> "'${word}'" }.join(', ') + (arguments.size() > 5 ? " and ${arguments.size() - 5} more" : '')
        error("${shown}: no option takes ${arguments.size() == 1 ? 'this argument' : 'these arguments'} (an unquoted glob is expanded by the shell: --input then takes the first file only); quote the glob (--input 'data/*.fa'), or list the files in a samplesheet (--input samples.csv)")
    }
}

// A parameter as text, null kept: Nextflow reads `--outdir 2024` (and `outdir: 2024` in a params
// file) as a number, which validation accepts as a path but the functions here take as text
def asText(value) {
    return value == null ? null : value.toString()
}

// --chunk_size as a number: a params file may quote it ("300"), which validation accepts; the
// classifier checks compare it with the numbers 300 and 500
def asChunkSize(value) {
    def text = value?.toString()?.trim()
    return text ==~ /\+?\d+/ ? text.replaceFirst(/^\+/, '').toInteger() : value
}

// A samplesheet is recognised by its extension; anything else is a file name or a glob.
def isSamplesheet(String input) {
    return input ==~ /(?i).*\.(csv|tsv|ya?ml|json)$/
}

// One sample per samplesheet `sample`; its rows (one file each, in the sheet's order) are the
// sample's input files. A list, not a channel: the sample names are checked before any task.
def samplesFromSamplesheet(String samplesheet) {
    def rows = samplesheetToList(samplesheet, "${projectDir}/assets/schema_input.json")
    checkSampleNames(rows.collect { row -> row[0].id }.unique(), "in ${samplesheet}", 'rename the sample')
    refuseUnsafePaths(rows.indexed().collect { i, row -> unsafePathProblem("${samplesheet} row ${i + 1}, file", row[1]) })
    checkRepeatedFiles(rows, samplesheet)
    return rows
        .groupBy { row -> row[0].id }
        .collect { id, group -> [[id: id], group.collect { row -> row[1] }] }
}

// One sample per file, named after the file without its FASTA/FASTQ and compression extensions.
// The glob is listed here, at start-up, so that a bad name stops the run before any task. What it
// matched is checked whole (unsafePathProblem): `'data/*/r.fa'` may match data/g[12]/r.fa; and a
// file whose name the glob is (`g[12].fa`, which the glob reads as g1.fa or g2.fa) is refused too.
// So is a match this Java cannot name (refuseUnnamableMatches), and one that is no file to read.
def samplesFromFiles(String pattern) {
    refuseUnsafePaths([file(pattern, glob: false)].findAll { path -> path.exists() }.collect { path -> unsafePathProblem('--input', path) })
    refuseNotFiles(pattern)
    def matched = files(pattern, checkIfExists: true)
    refuseUnnamableMatches(pattern, matched)
    refuseUnsafePaths(matched.collect { reads -> unsafePathProblem("--input ${pattern} matched", reads) })
    def rows = matched
        .collect { reads -> [[id: sampleIdFromPath(reads)], [reads]] }
        .sort { a, b -> a[0].id <=> b[0].id }
    return checkUniqueSampleIds(rows)
}

// <outdir>/pipeline_info/inputs_<start>.tsv: each sample's files in the order PREPARE stages them,
// with the name it gives them there (input/1/<name>, input/2/<name>, ...: the paths the sample's
// run_info.json records) and the path the user gave, so that those records lead back to the files.
def writeInputsTable(String outdir, String runStart, List samples) {
    if (workflow.preview) {
        return // no run, so no inputs of one
    }
    def lines = ['sample\tstaged_as\tpath']
    samples.each { sample ->
        sample[1].eachWithIndex { reads, i -> lines << inputsTableLine(sample[0].id, i, reads) }
    }
    def table = file("${outdir}/pipeline_info/inputs_${runStart}.tsv", glob: false)
    table.parent.mkdirs()
    try { // UTF-8 whatever the locale (the platform's charset under LANG=C is ASCII); never over a file
        java.nio.file.Files.writeString(table, lines.join('\n') + '\n', java.nio.charset.StandardCharsets.UTF_8, java.nio.file.StandardOpenOption.CREATE_NEW, java.nio.file.StandardOpenOption.WRITE)
    }
    catch (java.nio.file.FileAlreadyExistsException _e) {
        error("${table}: this run's table of inputs would replace what is already there, which this run did not write; move it out of the way, or give another --trace_report_suffix")
    }
}

// <outdir>/pipeline_info/params_<start>.json: every parameter's value this run took, from the command
// line, params files, profiles and defaults alike (the execution report shows only the command, and
// a profile's values, such as the test profile's --shard_size, were in the console log alone).
def writeParamsFile(String outdir, String runStart, Map values) {
    if (workflow.preview) {
        return
    }
    // not trace_report_suffix, the file's own <start>: given back with -params-file, the record would
    // name the reports of the new run after this one's, and Nextflow stops on "Trace file already
    // exists" (its suggested trace.overwrite truncates this run's trace)
    def plain = values.findAll { name, _value -> !name.toString().contains('-') && name != 'trace_report_suffix' }.collectEntries { name, value ->
        [(name.toString()): value == null || value instanceof Number || value instanceof Boolean ? value : value.toString()]
    }.sort()
    def json = file("${outdir}/pipeline_info/params_${runStart}.json", glob: false)
    json.parent.mkdirs()
    try {
        java.nio.file.Files.writeString(json, groovy.json.JsonOutput.prettyPrint(groovy.json.JsonOutput.toJson(plain)) + '\n', java.nio.charset.StandardCharsets.UTF_8, java.nio.file.StandardOpenOption.CREATE_NEW, java.nio.file.StandardOpenOption.WRITE)
    }
    catch (java.nio.file.FileAlreadyExistsException _e) {
        error("${json}: this run's record of its parameters would replace what is already there, which this run did not write; move it out of the way, or give another --trace_report_suffix")
    }
}

// One row of the inputs table: the sample, the name PREPARE stages its i-th file (0-based) under,
// and the file. A tab, line break or carriage return (refused in input paths, unsafePathProblem)
// would break the table's rows: written as \t, \n, \r should one ever get here.
def inputsTableLine(String id, int i, reads) {
    return [id, "input/${i + 1}/${reads.name}", reads.toUriString()]
        .collect { field -> field.toString().replace('\t', '\\t').replace('\n', '\\n').replace('\r', '\\r') }
        .join('\t')
}

// Under a locale whose file-name encoding is not UTF-8 (LANG=C), a folder's names are listed with
// U+FFFD for each byte beyond ASCII (unnamablePath), and under a UTF-8 one each byte that is no UTF-8:
// the task would be given that path, not the file's. Such matches stop the run, naming them (their
// text holds U+FFFD, printed as '?' under LANG=C).
def refuseUnnamableMatches(String pattern, List matched) {
    def unnamable = matched.findAll { reads -> unnamablePath(reads.toString()) }
    if (unnamable) {
        def text = unnamable.join(', ')
        error("--input ${pattern} matched ${text}: paths with ${unnamablePathCause(text)}; ${unnamablePathFix(text)}")
    }
}

// What --input names that is no file to read (a folder, a link to nothing, a pipe): refused, each
// named, before any task. Parameter validation says the same first; this holds under
// --validate_params false too, where PREPARE failed on a folder and a glob dropped the others unsaid.
def refuseNotFiles(String pattern) {
    def literal = file(pattern, glob: false)
    def problems = notFileProblems(pattern, literal.exists() ? [literal] : unreadableMatches(pattern))
    if (problems) {
        error("--input: ${problems.join('\n--input: ')}")
    }
}

// A file's sample name: its name without a compression extension, then a FASTA/FASTQ one
// (.fsa is NCBI's FASTA).
def sampleIdFromPath(reads) {
    return reads.name
        .replaceFirst(/(?i)\.(gz|bz2|xz)$/, '')
        .replaceFirst(/(?i)\.(fa|fasta|fna|fas|fsa|ffn|fq|fastq)$/, '')
}

// Each file's sample name is its own: files giving one name are refused, each name with its files.
def checkUniqueSampleIds(List rows) {
    def duplicated = rows.groupBy { row -> row[0].id }.findAll { _id, group -> group.size() > 1 }
    if (duplicated) {
        def clashes = duplicated.collect { id, group -> "'${id}' (${group.collect { row -> row[1][0].toUriString() }.join(', ')})" }
        error("Several input files give the sample name ${clashes.join('; ')}; rename them or use a samplesheet (--input samples.csv)")
    }
    checkSampleNames(rows.collect { row -> row[0].id }, 'from the input file names', 'rename the file or use a samplesheet (--input samples.csv)')
    return rows
}

// A sample name becomes a folder name: <outdir>/<sample>/ beside the run's own pipeline_info/,
// multiqc/ and virnucpro_summary.tsv, and the sample's checkpoint folder. So it holds only letters,
// digits, '.', '_' and '-' (the samplesheet's pattern), is none of those names, and no two names
// differ only in case (they would share one folder on macOS and Windows file systems). It is at
// most sampleNameLimit() characters: file systems allow 255 per name, and PREDICT writes
// <sample>.summary.tsv (a longer name failed only there, at the end of the run).
def checkSampleNames(List ids, String where, String fix) {
    def malformed = ids.findAll { id -> !(id ==~ /[A-Za-z0-9][A-Za-z0-9._-]*/) }
    if (malformed) {
        error("Sample name ${quoted(malformed)} ${where} may hold only letters, digits, '.', '_' and '-', starting with a letter or digit (it names the sample's results folder); ${fix}")
    }
    def tooLong = ids.findAll { id -> id.length() > sampleNameLimit() }
    if (tooLong) {
        error("Sample name ${quoted(tooLong)} ${where} is longer than ${sampleNameLimit()} characters (it names the sample's results files); ${fix}")
    }
    def reserved = ids.findAll { id -> id.toLowerCase(Locale.ROOT) in runOwnNames().collect { name -> name.toLowerCase(Locale.ROOT) } }
    if (reserved) {
        error("Sample name ${quoted(reserved)} ${where} is reserved for the run's own results; ${fix}")
    }
    def sameFolder = ids.groupBy { id -> id.toLowerCase(Locale.ROOT) }.values().findAll { names -> names.size() > 1 }
    if (sameFolder) {
        error("Sample names ${sameFolder.collect { names -> quoted(names) }.join('; ')} ${where} differ only in case and would share one results folder on some file systems; ${fix}")
    }
}

// The names the run itself takes at the top of --outdir (conf/modules.config's publishDir paths and
// markUnfinished's mark), which no sample's results folder may have: a sample named so ran every
// task, then failed to publish.
def runOwnNames() {
    return ['pipeline_info', 'multiqc', 'virnucpro_summary.tsv', unfinishedMarkName()]
}

// The file that says the results in --outdir may mix two runs (markUnfinished).
def unfinishedMarkName() {
    return 'RUN_UNFINISHED.txt'
}

// The longest sample name, in characters (the same as maxLength of `sample` in assets/schema_input.json)
def sampleNameLimit() {
    return 200
}

def quoted(List names) {
    return names.collect { name -> "'${name}'" }.join(', ')
}

// A file listed twice for one sample would be read twice (its records counted as duplicates, and
// named by their staged copies, which failed the whole run from PREPARE): refused here, naming the
// sample and the file, or its two names when it is one file under both (a hard link).
def checkRepeatedFiles(List rows, String samplesheet) {
    def repeated = rows.groupBy { row -> [row[0].id, fileIdentity(row[1])] }.findAll { _key, group -> group.size() > 1 }
    if (repeated) {
        def named = repeated.collect { key, group ->
            def names = group.collect { row -> canonicalPath(row[1]) }.unique()
            names.size() > 1 ? "one file under the names ${names.join(' and ')} (hard links) for sample '${key[0]}'" : "the file ${names[0]} for sample '${key[0]}'"
        }
        error("${samplesheet} lists ${named.join(', ')} more than once; list each file once per sample")
    }
}

// What makes two paths one file: a local file's device and inode (whatever links or `..` lead to
// it, hard links included), else the path behind links, or the URI.
def fileIdentity(path) {
    if (path.toUri().getScheme() == 'file' && path.exists()) {
        def key = java.nio.file.Files.readAttributes(path, java.nio.file.attribute.BasicFileAttributes).fileKey()
        return key != null ? key.toString() : canonicalPath(path)
    }
    return canonicalPath(path)
}

// The file behind links and `..`, where the file system can say; else the path as given.
def canonicalPath(path) {
    return path.toUri().getScheme() == 'file' && path.exists() ? path.toRealPath().toString() : path.toUriString()
}

// Nextflow 24.10 writes the path of each file it stages for a task into the task's shell scripts
// without escaping `$`, backticks, `{}`, `[]`, `*`, `?` or control characters (it escapes spaces and
// quotes): `ln -s SRC input/1/NAME` in .command.run, NAME in .command.sh. `$HOME` or `$(...)` in a
// name expanded or ran, `g[12]/r.fa` linked g1/r.fa, a tab or line break split the command. So a
// user's path holding one is refused before any task: the problem, naming what gave the path, or
// null. Paths are checked as Nextflow writes them (toUriString: plain for local files, no %-escapes).
def unsafePathProblem(String what, path) {
    def text = path instanceof CharSequence ? path.toString() : path.toUriString()
    def found = java.util.regex.Pattern.compile('[$`{}\\[\\]*?\\x00-\\x1F\\x7F-\\x9F]').matcher(text)
    if (!found.find()) {
        return null
    }
    return "${what} ${printablePath(text)}: ${describeCharacter(found.group())}".toString()
}

// Stops the run listing every problem found (unsafePathProblem's, nulls left out), and the way out.
def refuseUnsafePaths(List problems) {
    def found = problems.findAll { problem -> problem }
    if (found) {
        def header = "Paths holding a character Nextflow does not escape in the tasks' shell scripts (another file would be read, or part of a name run as a command):"
        def fix = 'Rename the file or folder, or make a link to it whose path has none of $ ` { } [ ] * ? or control characters, and give that path instead'
        error(([header] + found.collect { problem -> "  ${problem}" } + [fix]).join('\n'))
    }
}

// The paths the parameters give, as the tasks would see them (relative ones from the launch
// directory): files and folders staged into tasks (--models, --classifier, the downloaded models
// under --models_store), the checkpoint folder in EMBED's script, and --outdir; and the work folder,
// where every task's scripts run (and the default checkpoint folder lies): all checked at once.
// Where the launch folder is the culprit of relative paths and the default work folder, it is
// named once, with the paths it spoils, not each path (--models_store has a relative default).
def checkParameterPaths(Map parameters) {
    def used = ['outdir', 'models', 'classifier', 'checkpoint_dir'] + (downloadsModels(parameters) ? ['models_store'] : [])
    def names = used.findAll { name -> parameters[name] }
    def launch = unsafePathProblem('the launch folder', workflow.launchDir)
    def relative = launch ? names.findAll { name -> isRelativePath(parameters[name].toString()) } : []
    def defaultWork = workflow.workDir == workflow.launchDir.resolve('work')
    def problems = names.collect { name ->
        def text = parameters[name].toString()
        unsafePathProblem("--${name}", name in relative ? text : file(text, glob: false))
    }
    problems << (launch && defaultWork ? null : unsafePathProblem('-work-dir (the work folder)', workflow.workDir))
    refuseUnsafePaths(problems + [launchFolderProblem(launch, relative.collect { name -> "--${name} ${parameters[name]}" } + (defaultWork ? ['the default work folder (work)'] : []))])
    refuseModelsStoreBatchCannotKeep(parameters)
}

// Whether the run downloads the models (into --models_store): neither --models nor the tiny test
// models given (workflows/virnucpro.nf). Only then is --models_store, set by default, a path to check.
def downloadsModels(Map parameters) {
    return !parameters.models && parameters.tiny_models != true
}

// The executor of the awsbatch or google profile ('awsbatch', 'google-batch'), else null: there the
// tasks run on other hosts, in containers Nextflow starts itself (workflow.containerEngine is null).
def batchExecutor() {
    def profiles = (workflow.profile ?: '').toString().tokenize(',')
    return profiles.contains('awsbatch') ? 'awsbatch' : (profiles.contains('google') ? 'google-batch' : null)
}

// Under AWS or Google Batch the download's storeDir (--models_store) must be in the bucket: Nextflow
// 24.10 failed on any other path after the multi-GB download (Google: not a gs:// path; AWS CLI: an
// upload to s3://<first folder>/...; Fusion: refused). Stopped at once, naming both ways out.
def refuseModelsStoreBatchCannotKeep(Map parameters) {
    def executor = batchExecutor()
    def scheme = [awsbatch: 's3://', 'google-batch': 'gs://'][executor]
    def store = parameters.models_store ? parameters.models_store.toString() : ''
    if (!scheme || !downloadsModels(parameters) || store.startsWith(scheme)) {
        return
    }
    error("--models_store ${store ?: '(none)'}: under ${executor} the models download can be kept only in a ${scheme} bucket (Nextflow would fail after the download); give --models_store ${scheme}<bucket>/virnucpro-models, or models already staged there with --models ${scheme}<bucket>/virnucpro-models (docs/usage.md, \"AWS Batch and Google Batch\")")
}

// Whether a path is resolved against the launch folder (neither absolute nor a URI such as s3://).
def isRelativePath(String text) {
    return !(text.startsWith('/') || text ==~ /^[A-Za-z][A-Za-z0-9+.-]*:\/\/.*/)
}

// The launch folder's problem (unsafePathProblem's), with the paths under it it spoils, or null
// when it spoils none (every path absolute and -work-dir elsewhere: it is then no task's business).
def launchFolderProblem(String problem, List spoiled) {
    if (!problem || !spoiled) {
        return null
    }
    def listed = spoiled.size() == 1 ? spoiled[0] : "${spoiled.init().join(', ')} and ${spoiled.last()}"
    return "${problem} (${listed} ${spoiled.size() == 1 ? 'is' : 'are'} resolved from it: launch from another folder, or give ${spoiled.size() == 1 ? 'it as a path' : 'them as paths'} outside it)".toString()
}

// A path for a one-line message: control characters as \t, \n, \r or \uXXXX.
def printablePath(String text) {
    return text.replace('\t', '\\t').replace('\n', '\\n').replace('\r', '\\r')
        .replaceAll('[\\x00-\\x1F\\x7F-\\x9F]') { character -> String.format(Locale.ROOT, '\\u%04X', character.codePointAt(0)) }
}

// One character of a path, as a message names it.
def describeCharacter(String character) {
    def names = ['\t': 'a tab', '\n': 'a line break', '\r': 'a carriage return']
    if (names[character]) {
        return names[character]
    }
    return Character.isISOControl(character.charAt(0)) ? String.format(Locale.ROOT, 'the control character U+%04X', character.codePointAt(0)) : "'${character}'"
}

// One run at a time writes to an --outdir: the run holds an OS lock on
// <outdir>/pipeline_info/.virnucpro-run.lock until it ends (the kernel releases it if Nextflow is
// killed), and a second run given the same --outdir meanwhile stops before any task. Object
// storage (s3://, gs://) has no such lock: there the folder is not checked. An --outdir this user
// cannot write (nextflow.config then sends the reports to .nextflow/) is refused, naming it.
def lockOutdir(String outdir, String checkpointDir) {
    def dir = file(outdir, glob: false)
    if (dir.toUri().getScheme() != 'file') {
        return
    }
    refuseNestedOutdir(dir)
    refuseForeignOutdir(dir, [workflow.workDir, checkpointDir])
    // -preview and `nextflow inspect` run no task: checked, but nothing of ours is written
    refuseUnwritableOutdir(outdir, dir.resolve('pipeline_info'), !workflow.preview)
    if (workflow.preview) {
        return
    }
    // where this run's tasks write with `virnucpro`: the work folder, and in the checkpoint folder (which
    // may be --outdir itself) EMBED's --checkpoint-dir and --compile-cache (modules/local/virnucpro/embed)
    def taskFolders = [workflow.workDir] + (checkpointDir ? ['samples', 'compile-cache'].collect { name -> "${checkpointDir}/${name}" } : [])
    def lock = takeRunLock(outdir, dir.resolve('pipeline_info').resolve('.virnucpro-run.lock'))
    if (lock != null) {
        // the closure keeps the lock reachable (not garbage-collected, so not released) until the run ends
        workflow.onComplete { lock.release() }
    }
    refuseStubAndRealResultsMixed(dir, [workflow.workDir, checkpointDir])
    if (lock != null) { // once the run goes ahead: a run refused leaves the file as it found it
        recordTaskFolders(lock.channel(), taskFolders)
    }
}

// The run's lock on lockFile; an error when another run holds it; null, with a warning, on a file
// system that has no locks (the run goes on: nothing else could tell two runs apart there).
def takeRunLock(String outdir, lockFile) {
    def channel = openRunLock(outdir, lockFile)
    def lock = null
    try {
        lock = channel.tryLock()
    }
    catch (IOException e) {
        log.warn("--outdir ${outdir} not locked for this run (${e.message}): give each run its own --outdir")
        channel.close()
        return null
    }
    if (lock == null) {
        channel.close()
        error("--outdir ${outdir} is in use by another run of this pipeline (it holds ${lockFile}); wait for it to end, or give this run another --outdir")
    }
    return lock
}

// The locked file names the folders where this run's tasks write with `virnucpro` (`ownFolders`): a
// command is refused anywhere else under a held --outdir, whose publishing would replace what it
// writes (outdir.refuse_nesting in the package).
def recordTaskFolders(channel, List ownFolders) {
    def own = ownFolders.findAll { folder -> folder }.collect { folder -> canonicalPath(file(folder.toString(), glob: false)) }
    channel.truncate(0)
    channel.write(java.nio.ByteBuffer.wrap(groovy.json.JsonOutput.toJson([own_folders: own]).getBytes('UTF-8')), 0)
}

// A stub run (-stub-run) publishes placeholders where results go (header-only tables, fake embedding
// files, a summary of no rows): never into a folder that holds a real run's results, which it would
// replace (and an earlier run's extra shards removed with them), nor a real run into a folder of
// placeholders, which would mix with its results. pipeline_info/.virnucpro-stub-run marks a stub run's
// folder (markStubRun); called once the run holds the folder's lock.
def refuseStubAndRealResultsMixed(dir, List ownFolders) {
    def mark = stubRunMark(dir)
    def marked = java.nio.file.Files.exists(mark, java.nio.file.LinkOption.NOFOLLOW_LINKS)
    if (!workflow.stubRun && marked) {
        error("--outdir ${dir} holds the placeholder results of a stub run (-stub-run; it has ${mark}): give this run a new --outdir, or delete that folder first")
    }
    if (!workflow.stubRun || marked) {
        return
    }
    def held = resultEntries(dir, ownFolders)
    if (held) {
        error("-stub-run writes placeholders in place of results, and --outdir ${dir} holds a run's results (${quoted(held.take(5))}${held.size() > 5 ? " and ${held.size() - 5} more" : ''}): give the stub run a new --outdir")
    }
}

def stubRunMark(dir) {
    return dir.resolve('pipeline_info').resolve('.virnucpro-stub-run')
}

// The mark of a stub run's --outdir (refuseStubAndRealResultsMixed), written once the start-up checks
// passed, just before its tasks start: a stub run refused at start-up has published nothing.
def markStubRun(String outdir) {
    def dir = outdir ? file(outdir, glob: false) : null
    if (!workflow.stubRun || workflow.preview || dir == null || dir.toUri().getScheme() != 'file') {
        return  // -preview runs no task: nothing of it to mark (and it was not checked, lockOutdir)
    }
    def mark = stubRunMark(dir)
    if (!java.nio.file.Files.exists(mark, java.nio.file.LinkOption.NOFOLLOW_LINKS)) {
        mark.text = "A stub run (-stub-run) of virnucpro wrote the files of this folder: placeholders, not results. Runs without -stub-run refuse this folder.\n"
    }
}

// nextflow.config sends the reports of a run that will be refused for its --outdir to .nextflow/,
// judging the folder before Nextflow knows its work directory: one given with -w inside --outdir
// (not named `work` in the launch folder) is taken there for a foreign folder's. The run is not
// refused, so its reports are said to be elsewhere instead of missing from pipeline_info/ unsaid.
def warnIfReportsElsewhere(String outdir, String suffix) {
    def name = "execution_trace_${suffix}.txt".toString()
    def trace = workflow.launchDir.resolve('.nextflow').resolve('pipeline_info').resolve(name)
    def inOutdir = file(outdir, glob: false).resolve('pipeline_info').resolve(name)
    if (!workflow.preview && java.nio.file.Files.isRegularFile(trace) && !java.nio.file.Files.exists(inOutdir)) {
        log.warn("--outdir ${outdir}: this run's execution report, timeline, trace and DAG are in ${trace.parent}, not in its pipeline_info/ (when Nextflow read its configuration, before it knew the work directory given with -w, it took the folder for one this run would be refused: one holding that work directory, or one inside ./work, the default work directory)")
    }
}

// An --outdir that already holds files but no pipeline_info/.virnucpro-run.lock (no run of this
// pipeline wrote it: another pipeline's results/, a folder of the user's) is refused before this run
// writes there: publishing replaces every file that has the name of one of its results
// (multiqc/multiqc_report.html, <sample>/report.html). Not counted: what no result of the run can be
// named (hidden entries such as .nextflow or .DS_Store, lost+found), pipeline_info/ (where this
// run's Nextflow has already opened its reports), and this run's own folders inside it (the work
// directory, the checkpoint folder `ownFolders`).
def refuseForeignOutdir(dir, List ownFolders) {
    if (!java.nio.file.Files.isDirectory(dir) || dir.resolve('pipeline_info').resolve('.virnucpro-run.lock').exists()) {
        return
    }
    def held = resultEntries(dir, ownFolders)
    if (held) {
        def shown = quoted(held.take(5)) + (held.size() > 5 ? " and ${held.size() - 5} more" : '')
        error("--outdir ${dir} already holds ${shown}, and no run of this pipeline wrote it (it has no pipeline_info/.virnucpro-run.lock): this run would replace those of its files that have the name of one of its results; give a new or empty --outdir")
    }
}

// The entries of --outdir `dir` that a run's results may be: not hidden ones (.nextflow, .DS_Store),
// lost+found, pipeline_info/ (where this run's Nextflow has already opened its reports), this run's
// own folders inside it (`ownFolders`: the work directory, the checkpoint folder), nor what holds
// only the reports this run's Nextflow opened elsewhere in it (-with-trace <outdir>/trace.txt: the
// run refused the new folder for the file, and every later run too). Sorted names.
def resultEntries(dir, List ownFolders) {
    def real = file(canonicalPath(dir), glob: false)
    def own = ownFolders.findAll { folder -> folder }
        .collect { folder -> file(canonicalPath(file(folder.toString(), glob: false)), glob: false) }
        .findAll { folder -> folder != real && folder.startsWith(real) }
        .collect { folder -> real.relativize(folder).getName(0).toString() }
    def reports = thisRunsReports()
    return ((dir.toFile().list() ?: []) as List)
        .findAll { name -> !name.startsWith('.') && !(name in ['pipeline_info', 'lost+found'] + own) }
        .findAll { name -> !(reports && holdsOnlyReports(dir.resolve(name), reports)) }.sort()
}

// The report files this run's Nextflow opened before the start-up checks (trace, report, timeline,
// DAG: as the configuration or -with-trace and the like set them) that exist, as canonical paths.
def thisRunsReports() {
    def config = workflow.session.config
    return ['trace', 'report', 'timeline', 'dag'].findAll { scope -> config[scope] instanceof Map && config[scope].enabled && config[scope].file }
        .collect { scope -> file(config[scope].file.toString(), glob: false) }
        .findAll { path -> path.toUri().getScheme() == 'file' && path.exists() }
        .collect { path -> canonicalPath(path) }
}

// Whether `path` is one of `reports`, or a folder holding files that all are (and at least one).
def holdsOnlyReports(path, List reports) {
    def nofollow = java.nio.file.LinkOption.NOFOLLOW_LINKS
    if (java.nio.file.Files.isRegularFile(path, nofollow)) {
        return canonicalPath(path) in reports
    }
    def entries = java.nio.file.Files.isDirectory(path, nofollow) ? ((path.toFile().list() ?: []) as List) : []
    return entries && entries.every { name -> holdsOnlyReports(path.resolve(name), reports) }
}

// A run that has not completed successfully (failed, stopped, or some of its tasks failed and were
// ignored) may have replaced some of an earlier run's results and not others (a sample's tables, not
// yet the summary or MultiQC's report): <outdir>/RUN_UNFINISHED.txt says so from the end of the
// start-up checks until a run completes with every task, which removes it. A file of that name that
// is not this mark (the user's, a link) is never written through nor removed: a warning says so.
def markUnfinished(String outdir) {
    def dir = outdir ? file(outdir, glob: false) : null
    if (workflow.preview || dir == null || dir.toUri().getScheme() != 'file') {
        return
    }
    def marker = dir.resolve(unfinishedMarkName())
    if (java.nio.file.Files.exists(marker, java.nio.file.LinkOption.NOFOLLOW_LINKS) && !isUnfinishedMark(marker)) {
        log.warn("${marker} is not the mark this pipeline writes (a file of yours, or a link): left as it is, so nothing in --outdir says whether this run completed")
        return
    }
    try {
        marker.text = unfinishedMarkTitle() + "The run ${workflow.runName} (session ${workflow.sessionId}), started ${workflow.start}, has not completed with every task: the results in this folder may mix its outputs with an earlier run's (virnucpro_summary.tsv and multiqc/ are the last ones to be replaced), or lack a sample whose task failed. Resume it (the same command with -resume) or run it again; a run that completes removes this file.\n"
    }
    catch (IOException e) {
        log.warn("--outdir ${dir}: the mark of an unfinished run could not be written (${e.message})")
        return
    }
    def run = workflow // inside the handler `workflow` names nothing (its delegate has no such property)
    workflow.onComplete {
        if (run.success && run.stats.ignoredCount == 0 && isUnfinishedMark(marker)) {
            java.nio.file.Files.deleteIfExists(marker)
        }
    }
}

// The first line of RUN_UNFINISHED.txt, by which the pipeline knows the file for its own.
def unfinishedMarkTitle() {
    return 'virnucpro pipeline: run not completed\n'
}

// Whether `marker` is a regular file (not a link) that this pipeline wrote as RUN_UNFINISHED.txt.
def isUnfinishedMark(marker) {
    if (!java.nio.file.Files.isRegularFile(marker, java.nio.file.LinkOption.NOFOLLOW_LINKS)) {
        return false
    }
    def first = null
    try {
        first = java.nio.file.Files.newBufferedReader(marker).withCloseable { reader -> reader.readLine() }
    }
    catch (IOException _e) {
        return false
    }
    return first != null && first + '\n' == unfinishedMarkTitle()
}

// --publish_dir_mode link makes hard links from the work directory into --outdir, which work only
// within one file system (one mount): across two, every task would run and then each publish fail
// ("Failed to publish file", the cause only in .nextflow.log). Refused before any task instead.
def refuseLinksAcrossFileSystems(String outdir, String mode) {
    def dir = file(outdir, glob: false)
    if (mode != 'link' || dir.toUri().getScheme() != 'file' || workflow.workDir.toUri().getScheme() != 'file') {
        return
    }
    def stores
    try {
        stores = [dir, workflow.workDir].collect { path -> java.nio.file.Files.getFileStore(nearestExisting(path.toAbsolutePath())) }
    }
    catch (IOException e) {
        log.debug("file systems of --outdir and the work directory not compared: ${e}")
        return // not known: publishing says it, as without this check
    }
    if (stores[0] != stores[1]) {
        error("--publish_dir_mode link makes hard links from the work directory ${workflow.workDir} into --outdir ${outdir}, and the two are on different file systems (${stores[1]}, ${stores[0]}): publishing would fail once every task has run; give --publish_dir_mode copy (or symlink), or an --outdir on the work directory's file system")
    }
}

// Publishing as the configuration holds it, against the parameters the start-up checks, the summary
// and params_<start>.json go by. conf/modules.config reads --publish_dir_mode, --save_prepared and
// --save_embeddings when nextflow.config is read, before any -c file: set among a -c file's params,
// they were recorded and checked but not used (files copied though 'symlink' was recorded, no
// prepared/ or embeddings/ though asked for). A -c file's own publishDir in another mode escaped the
// checks made for the mode given (hard links across file systems failed once every task had run).
def refusePublishingUnlikeParams(processConfig, String mode, Map saved) {
    def problems = publishingProblems(processConfig, mode, saved)
    if (problems) {
        error("the configuration publishes otherwise than the parameters say: ${problems.join('; ')}. Give --publish_dir_mode, --save_prepared and --save_embeddings on the command line or in a -params-file (conf/modules.config reads them before a -c file's params), and leave publishDir out of -c files: the pipeline's checks of --outdir go by those parameters")
    }
}

// What publishes otherwise than --publish_dir_mode and the save switches (saved: process name ->
// whether its files are asked for) say. conf/modules.config's selectors publish in the mode those
// parameters give (PREPARE's folder, EMBED's shards and the versions are copied under 'move': later
// tasks read them) and PREPARE and EMBED only when asked; a publishDir of any other selector
// (a process's full name, a pattern, a label, the process scope, nested ones) is a -c file's own,
// which Nextflow applies over the pipeline's.
def publishingProblems(processConfig, String mode, Map saved) {
    def problems = []
    publishDirSettings(processConfig, []).each { selectors, entry ->
        def where = selectors ? selectors.join(' ') : 'process'
        def name = selectors.size() == 1 && selectors[0] in pipelinePublishing() ? selectors[0] - 'withName:' : null
        if (name == null) {
            problems << "${where} sets a publishDir of its own".toString()
            return
        }
        def expected = mode == 'move' && name in ['VIRNUCPRO_PREPARE', 'VIRNUCPRO_EMBED', 'VIRNUCPRO_VERSIONS'] ? 'copy' : mode
        def entryMode = entry.mode == null ? 'symlink' : entry.mode.toString()
        if (entryMode != expected) {
            problems << "${where} publishes in mode '${entryMode}', --publish_dir_mode '${mode}' gives '${expected}'".toString()
        }
        def enabled = entry.enabled == null ? true : entry.enabled as boolean
        if (saved.containsKey(name) && enabled != saved[name]) {
            problems << "${where} ${enabled ? 'publishes' : 'does not publish'} its files, --save_${name == 'VIRNUCPRO_PREPARE' ? 'prepared' : 'embeddings'} is ${saved[name]}".toString()
        }
    }
    return problems
}

// The selectors conf/modules.config publishes with.
def pipelinePublishing() {
    return ['VIRNUCPRO_PREPARE', 'VIRNUCPRO_EMBED', 'VIRNUCPRO_PREDICT', 'VIRNUCPRO_SUMMARY', 'VIRNUCPRO_VERSIONS', 'MULTIQC']
        .collect { name -> "withName:${name}".toString() }
}

// Every publishDir entry in the process scope of the configuration, with the selectors it is under
// (withName:..., withLabel:..., nested), as [selectors, entry] pairs.
def publishDirSettings(settings, List selectors) {
    if (!(settings instanceof Map)) {
        return []
    }
    def found = []
    settings.each { key, value ->
        if (key.toString() == 'publishDir') {
            def entries = value instanceof Map ? [value] : (value instanceof List ? value : [])
            found += entries.findAll { entry -> entry instanceof Map }.collect { entry -> [selectors, entry] }
        }
        else if (key.toString().startsWith('withName:') || key.toString().startsWith('withLabel:')) {
            found += publishDirSettings(value, selectors + [key.toString()])
        }
    }
    return found
}

// --outdir and its pipeline_info/ (made unless -preview) must be folders this user can write into.
def refuseUnwritableOutdir(String outdir, info, boolean create) {
    def problem = [info.parent, info].findResult { folder -> unwritableFolderProblem(folder, create) }
    if (problem) {
        error("--outdir ${outdir} ${problem}: the run writes its results and reports there; give an --outdir you can write into, or make this one writable for you")
    }
}

// The run lock of --outdir opened for writing (created if missing); one this user cannot open (an
// earlier run of another user left it) stops the run, naming it.
def openRunLock(String outdir, lockFile) {
    try {
        return java.nio.channels.FileChannel.open(lockFile, java.nio.file.StandardOpenOption.CREATE, java.nio.file.StandardOpenOption.WRITE)
    }
    catch (IOException e) {
        error("--outdir ${outdir}: this run cannot open its lock ${lockFile} (${e}): give an --outdir you can write into, or make this one writable for you")
    }
}

// Two runs never share an output folder, nested ones included: an --outdir inside another run's
// --outdir (it holds pipeline_info/.virnucpro-run.lock), inside the work directory, or that is or is
// inside a `virnucpro` command's output (commandMarker) is refused before any task, and before this
// run writes its own lock there.
def refuseNestedOutdir(dir) {
    def real = file(canonicalPath(dir.parent ?: dir), glob: false).resolve(dir.name)
    def work = file(canonicalPath(workflow.workDir), glob: false)
    if (real.startsWith(work)) {
        error("--outdir ${dir} is inside the work directory ${work}: `nextflow clean` would delete the results; choose a folder outside it")
    }
    def above = real.nameCount > 1 ? (1..<real.nameCount) : []  // Groovy's 1..<1 and 1..<0 are no empty ranges
    def ancestors = [real.root] + above.collect { i -> real.root.resolve(real.subpath(0, i)) }
    def run = ancestors.find { folder -> folder.resolve('pipeline_info').resolve('.virnucpro-run.lock').exists() }
    if (run) {
        error("--outdir ${dir} is inside ${run}, the --outdir of another run of this pipeline: the two runs' results would mix; choose a folder outside it")
    }
    if (commandMarker(real)) {
        error("--outdir ${dir} is the output folder of a virnucpro command (it holds ${commandMarker(real).name}): this run would mix its results with the command's and replace its files; choose another --outdir")
    }
    def command = ancestors.find { folder -> commandMarker(folder) }
    if (command) {
        error("--outdir ${dir} is inside ${command}, an output of a virnucpro command: choose a folder outside it")
    }
}

// The file a `virnucpro` command keeps in every folder it writes, or null: its marker (the list of
// the files it published, .virnucpro.json) or its lock (.virnucpro.lock, or .virnucpro.lock.pid
// where the file system has no flock), which is there from the command's start. The pipeline
// publishes none of them into --outdir or <outdir>/<sample>/ (PREDICT publishes its tables one by
// one, not its folder), so its own earlier results never hold one.
def commandMarker(folder) {
    return ['.virnucpro.json', '.virnucpro.lock', '.virnucpro.lock.pid']
        .collect { name -> folder.resolve(name) }
        .find { marker -> marker.exists() }
}

// A sample's results go to <outdir>/<sample>/: when that folder is a `virnucpro` command's output
// (`virnucpro predict --outdir results/coding`, then a run with a sample `coding` and --outdir
// results), publishing would replace the command's tables. Refused before any task, naming the
// folders. Object storage (s3://, gs://) is not checked: no virnucpro command writes there.
def refuseCommandOutputs(String outdir, List ids) {
    def dir = outdir ? file(outdir, glob: false) : null
    if (dir == null || dir.toUri().getScheme() != 'file') {
        return
    }
    def taken = ids.collect { id -> dir.resolve(id) }.findAll { folder -> commandMarker(folder) }
    if (taken) {
        error("${taken.collect { folder -> "${folder} (it holds ${commandMarker(folder).name})" }.join(', ')}: the results folder of sample ${quoted(taken.collect { folder -> folder.name })} is the output of a virnucpro command, which this run would replace; choose another --outdir or rename the sample")
    }
}

// A sample's results folder <outdir>/<sample>/ may not be, nor hold, a folder the run keeps for
// itself inside --outdir: with `--checkpoint_dir results/ckpt` and a sample `ckpt`, the checkpoints
// and the sample's tables would share results/ckpt/, and removing the checkpoints (rm -r) would
// remove the results. A checkpoint folder that is --outdir itself takes the names of what EMBED
// keeps in it (modules/local/virnucpro/embed). Compared case-blind, as sample names are
// (checkSampleNames). `folders`: [checkpoint: path or '', work: path], as text.
def refuseSamplesOverRunFolders(String outdir, List ids, Map folders) {
    def dir = outdir ? file(outdir, glob: false) : null
    if (dir == null || dir.toUri().getScheme() != 'file') {
        return
    }
    def top = java.nio.file.Paths.get(canonicalPath(dir))
    def taken = [:] // a name at the top of --outdir -> the run's folder that takes it
    folders.each { kind, folder ->
        def path = folder ? file(folder.toString(), glob: false) : null
        def real = path?.toUri()?.getScheme() == 'file' ? java.nio.file.Paths.get(canonicalPath(path.toAbsolutePath().normalize())) : null
        if (real == top && kind == 'checkpoint') {
            checkpointEntries().each { name -> taken[name] = "${folder}/${name}" }
        }
        else if (real != null && real.startsWith(top) && real != top) {
            taken[real.getName(top.getNameCount()).toString()] = folder.toString()
        }
    }
    def clashes = ids.collect { id -> [id, taken.find { name, _folder -> name.equalsIgnoreCase(id) }] }.findAll { entry -> entry[1] }
    if (clashes) {
        error(clashes.collect { entry -> "Sample '${entry[0]}' would share its results folder with this run's own ${entry[1].value} (${dir.resolve(entry[1].key)})" }.join('; ') + ': rename the sample, or keep that folder out of --outdir (--checkpoint_dir, -work-dir)')
    }
}

// What EMBED keeps at the top of the checkpoint folder (modules/local/virnucpro/embed: a folder per
// sample under samples/, the compiled kernels, the GPU slots' locks)
def checkpointEntries() {
    return ['samples', 'compile-cache', '.gpu-slots']
}

// Sample folders an earlier run published in --outdir for samples this run does not have (removed
// or renamed in the samplesheet): left as they are, but said, since virnucpro_summary.tsv and
// MultiQC's report list this run's samples only. A folder counts when it holds anything the pipeline
// publishes for a sample (a table, prepared/, embeddings/: an interrupted run may have published
// only some) and is no virnucpro command's output.
def warnEarlierSamples(String outdir, List ids) {
    def dir = outdir ? file(outdir, glob: false) : null
    if (dir == null || dir.toUri().getScheme() != 'file' || !java.nio.file.Files.isDirectory(dir)) {
        return
    }
    def nofollow = java.nio.file.LinkOption.NOFOLLOW_LINKS
    def earlier = []
    try {
        earlier = java.nio.file.Files.list(dir).withCloseable { entries -> entries.iterator().toList() }
            .findAll { entry -> !isRunsOwnEntry(dir, entry, ids + runOwnNames()) && java.nio.file.Files.isDirectory(entry, nofollow) }
            .findAll { entry -> samplePublished().any { name -> java.nio.file.Files.exists(entry.resolve(name), nofollow) } }
            .findAll { entry -> !commandMarker(entry) }
            .collect { entry -> entry.fileName.toString() }
            .sort()
    }
    catch (Exception _e) { // IOException, or UncheckedIOException from the listing
        return // a folder that cannot be listed is refused by the checks that write into it
    }
    if (earlier) {
        def shown = earlier.take(10).collect { name -> "'${name}'" }.join(', ') + (earlier.size() > 10 ? " and ${earlier.size() - 10} more" : '')
        log.warn("--outdir ${outdir} holds the results (or part of them) of ${earlier.size() == 1 ? 'sample' : 'samples'} ${shown} from an earlier run, which this run does not have (removed or renamed in the input): ${earlier.size() == 1 ? 'it is' : 'they are'} kept as ${earlier.size() == 1 ? 'it is' : 'they are'}, but virnucpro_summary.tsv and the MultiQC report list this run's samples only; remove ${earlier.size() == 1 ? 'that folder' : 'those folders'}, or give each run its own --outdir")
    }
}

// Whether `entry` of --outdir is the folder of one of `names`: the same name, or the same folder
// under another case on a file system that ignores case (`SAMPLES/` is sample `samples`'s on macOS,
// an earlier run's on Linux)
def isRunsOwnEntry(dir, entry, List names) {
    def name = entry.fileName.toString()
    return name in names || names.findAll { own -> own.equalsIgnoreCase(name) }.any { own ->
        try {
            return java.nio.file.Files.isSameFile(dir.resolve(own), entry)
        }
        catch (IOException _e) {
            return false // no folder of that spelling: another one
        }
    }
}

// With --save_embeddings, a sample's embeddings/ holds one file per shard of this run: a shard an
// earlier run published there whose name this run's shards (`names`) no longer have (the input
// got shorter) would pass for this run's, and `virnucpro predict` over embeddings/*.h5 refuses it.
// Such files are removed once the sample's shards are all embedded: only files virnucpro wrote
// (shard_N.h5 beginning with embed's seal), and links to one only where this run publishes links
// (`links`: -publish_dir_mode symlink or rellink; a link is removed as a link); anything else is left.
def removeEarlierShards(String outdir, String id, List names, boolean links) {
    def dir = outdir ? file(outdir, glob: false) : null
    if (dir == null || dir.toUri().getScheme() != 'file') {
        return
    }
    def folder = dir.resolve(id).resolve('embeddings')
    if (!java.nio.file.Files.isDirectory(folder, java.nio.file.LinkOption.NOFOLLOW_LINKS)) {
        return
    }
    try {
        def earlier = java.nio.file.Files.list(folder).withCloseable { entries -> entries.iterator().toList() }
            .findAll { entry -> entry.fileName.toString() ==~ /shard_[0-9]+\.h5/ && !(entry.fileName.toString() in names) }
            .findAll { entry -> (links || !java.nio.file.Files.isSymbolicLink(entry)) && isSealedShard(entry) }
            .sort { entry -> entry.fileName.toString() }
        earlier.each { entry -> java.nio.file.Files.delete(entry) }
        if (earlier) {
            log.info("Sample '${id}': removed ${earlier.size()} embedding ${earlier.size() == 1 ? 'shard' : 'shards'} an earlier run published in ${folder} (${earlier.collect { entry -> entry.fileName }.join(', ')}): this run's input has ${names.size()} ${names.size() == 1 ? 'shard' : 'shards'}")
        }
    }
    catch (Exception e) { // IOException, or UncheckedIOException from the listing: a warning, not the run's end
        log.warn("Sample '${id}': ${folder} may still hold embedding shards of an earlier run (${e.message}); remove those not named ${names.sort().join(', ')}")
    }
}

// Whether the file (links followed) is a regular one that begins with the seal `virnucpro embed`
// writes (h5shard.SEAL_MAGIC); a FIFO is never opened (it would wait for a writer for ever).
def isSealedShard(path) {
    def magic = 'virnucpro embedding shard seal 1\n'.getBytes('US-ASCII')
    if (!java.nio.file.Files.isRegularFile(path)) {
        return false
    }
    try {
        return java.nio.file.Files.newInputStream(path).withCloseable { stream -> stream.readNBytes(magic.length) == magic }
    }
    catch (IOException _e) {
        return false
    }
}

// What an earlier run published in --outdir that this run publishes no new one of, so does not
// replace: MultiQC's report under --skip_multiqc, its exported plots (virnucpro 0.2.0dev before
// plot export was turned off), a sample's prepared/ or embeddings/ without --save_prepared or
// --save_embeddings. Kept beside this run's results they would pass for them (a report of other
// counts): refused before any task, naming each, with the command that removes them.
def refuseStaleOutputs(String outdir, List ids, Map publishes) {
    def dir = outdir ? file(outdir, glob: false) : null
    if (dir == null || dir.toUri().getScheme() != 'file') {
        return
    }
    def options = [multiqc: '--skip_multiqc', plots: 'no MultiQC plot export', prepared: 'no --save_prepared', embeddings: 'no --save_embeddings']
    def candidates = (publishes.multiqc ? [[dir.resolve('multiqc').resolve('multiqc_report_plots'), 'plots']] : [[dir.resolve('multiqc'), 'multiqc']]) +
        ids.collectMany { id -> ['prepared', 'embeddings'].findAll { kind -> !publishes[kind] }.collect { kind -> [dir.resolve(id).resolve(kind), kind] } }
    def stale = candidates.findAll { candidate -> java.nio.file.Files.exists(candidate[0], java.nio.file.LinkOption.NOFOLLOW_LINKS) }
    if (stale) {
        def paths = stale.collect { candidate -> candidate[0] }
        def why = stale.collect { candidate -> options[candidate[1]] }.unique().join(', ')
        def removal = paths.collect { path -> "'" + path.toString().replace("'", "'\\''") + "'" }.join(' ')
        error("${paths.join(', ')}: an earlier run published ${paths.size() == 1 ? 'this' : 'these'} in --outdir ${outdir}, and this run (${why}) publishes no new one, so kept beside its results ${paths.size() == 1 ? 'it' : 'they'} would pass for this run's; remove ${paths.size() == 1 ? 'it' : 'them'} (rm -r ${removal}) or give another --outdir")
    }
}

// Publishing replaces whatever has the name of one of the run's results, a folder with all it holds
// (Nextflow deletes it first). In an --outdir an earlier run wrote (refuseForeignOutdir refuses any
// other that holds files), what the user put at such a name would be lost: a new sample's folder
// holding a report.html of theirs, notes left in a sample's prepared/, a folder at the name of a
// table. Each such place must hold what this pipeline publishes there (foreignAtTarget); anything
// else is refused before any task, each path named. Object storage (s3://, gs://) is not checked.
def refuseForeignPublishTargets(String outdir, List ids, Map publishes) {
    def dir = outdir ? file(outdir, glob: false) : null
    if (dir == null || dir.toUri().getScheme() != 'file' || !java.nio.file.Files.isDirectory(dir)) {
        return
    }
    def targets = [[dir.resolve('virnucpro_summary.tsv'), 'virnucpro_summary.tsv'], [dir.resolve('pipeline_info').resolve('virnucpro_software_mqc_versions.yml'), 'virnucpro_software_mqc_versions.yml']] +
        (publishes.multiqc ? multiqcOutputs().collect { name -> [dir.resolve('multiqc').resolve(name), name] } : []) +
        ids.collectMany { id -> sampleTargets(dir.resolve(id), publishes) }
    def foreign = targets.collect { target -> [target[0], foreignAtTarget(target[0], target[1], publishes.links as boolean)] }
        .findAll { found -> found[1] }
    if (foreign) {
        def shown = foreign.take(10).collect { found -> "${found[0]} (${found[1]})" }.join(', ') + (foreign.size() > 10 ? " and ${foreign.size() - 10} more" : '')
        error("--outdir ${outdir}: this run publishes its results at ${foreign.size() == 1 ? 'a name' : 'names'} taken by what this pipeline did not write there, which publishing would delete: ${shown}; move ${foreign.size() == 1 ? 'it' : 'them'} out of the way, or give another --outdir")
    }
}

// What PREDICT publishes in a sample's folder, and MULTIQC in multiqc/ (modules/local/multiqc)
def predictOutputs() {
    return ['prediction_results.txt', 'prediction_results_highestscore.csv', 'chunks.tsv', 'sequences.tsv', 'report.html', 'run_info.json']
}

// The names the pipeline publishes in a sample's folder: PREDICT's tables, prepared/ and embeddings/
def samplePublished() {
    return predictOutputs() + ['prepared', 'embeddings']
}

def multiqcOutputs() {
    return ['multiqc_report.html', 'multiqc_report_data']
}

// [path, kind] of each place this run publishes to in a sample's folder: the tables, prepared/ and
// each embedding shard (embeddings/shard_N.h5) already there; other names there are never touched.
def sampleTargets(folder, Map publishes) {
    def targets = predictOutputs().collect { name -> [folder.resolve(name), name] }
    if (publishes.prepared) {
        targets << [folder.resolve('prepared'), 'prepared']
    }
    def shards = folder.resolve('embeddings')
    if (publishes.embeddings && java.nio.file.Files.isDirectory(shards, java.nio.file.LinkOption.NOFOLLOW_LINKS)) {
        targets += listEntries(shards).findAll { entry -> entry.fileName.toString() ==~ /shard_[0-9]+\.h5/ }.collect { entry -> [entry, 'shard'] }
    }
    return targets
}

// The entries of a folder ([] when it cannot be listed: the task that writes there says why)
def listEntries(folder) {
    try {
        return java.nio.file.Files.list(folder).withCloseable { entries -> entries.iterator().toList() }
    }
    catch (Exception _e) { // IOException, or UncheckedIOException from the listing
        return []
    }
}

// Why what is at `path` is not what this pipeline publishes as `kind` there, or null when it is (or
// nothing is there): a file begins as the pipeline's does (publishedOpenings; a shard with embed's
// seal), multiqc's folders are folders, prepared/ holds only what `virnucpro prepare` writes. A
// symbolic link (publishing replaces the link, never what it points to) counts as the pipeline's
// where it publishes links (`links`), else when what it points to does (an earlier run's links into
// its work directory) or nothing is there.
def foreignAtTarget(path, String kind, boolean links) {
    if (!java.nio.file.Files.exists(path, java.nio.file.LinkOption.NOFOLLOW_LINKS)) {
        return null
    }
    def linked = java.nio.file.Files.isSymbolicLink(path)
    if (linked && (links || !java.nio.file.Files.exists(path))) {
        return null
    }
    def why = foreignThing(path, kind)
    return linked && why ? "a symbolic link; where it points: ${why}" : why
}

// Why the file or folder at `path` (links followed) is not what this pipeline publishes as `kind`
def foreignThing(path, String kind) {
    if (kind == 'prepared') {
        return foreignInPrepared(path)
    }
    if (kind == 'multiqc_report_data') {
        return foreignInMultiqcFolder(path)
    }
    if (!java.nio.file.Files.isRegularFile(path)) {
        return java.nio.file.Files.isDirectory(path) ? 'a folder' : 'not a regular file'
    }
    if (kind == 'shard') {
        return isSealedShard(path) ? null : 'not a shard virnucpro embed wrote'
    }
    return beginsAsPublished(path, kind) ? null : 'a file this pipeline did not write'
}

// How each file the pipeline publishes begins (its first bytes; any of a list), as the virnucpro
// version of this pipeline writes it: tests/test_publish_targets.py checks them against its writers.
// MultiQC's report names MultiQC within its first bytes.
def publishedOpenings() {
    return [
        'prediction_results.txt': ['Sequence_ID\tPrediction\tscore1\tscore2\n'],
        'prediction_results_highestscore.csv': ['Modified_ID\tIs_Virus\n'],
        'chunks.tsv': ['chunk_id\tsequence_id\tstart\tlength\t'],
        'sequences.tsv': ['sequence_id\tlength\tn_chunks\t'],
        'report.html': ['<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>virnucpro report'],
        'run_info.json': ['{\n  "virnucpro_version": '],
        'virnucpro_summary.tsv': ['sample\tinput_records\t', "# id: 'virnucpro-virnucpro-summary'", 'sample\n'],
        'virnucpro_software_mqc_versions.yml': ['VIRNUCPRO_', 'Workflow:\n'],
    ]
}

// Whether the regular file at `path` begins as the pipeline's `kind` does (publishedOpenings; for
// MultiQC's report, names MultiQC in its first 4 KiB)
def beginsAsPublished(path, String kind) {
    def head
    try {
        head = java.nio.file.Files.newInputStream(path).withCloseable { stream -> stream.readNBytes(4096) }
    }
    catch (IOException _e) {
        return false
    }
    def text = new String(head, 'ISO-8859-1')
    if (kind == 'multiqc_report.html') {
        return text.contains('MultiQC')
    }
    return publishedOpenings()[kind].any { opening -> text.startsWith(opening) }
}

// Why the data folder MultiQC writes beside its report is not as MultiQC 1.35 writes it, or null:
// it holds files named multiqc* (and llms-full.txt)
def foreignInMultiqcFolder(folder) {
    if (!java.nio.file.Files.isDirectory(folder)) {
        return 'not a folder'
    }
    def nofollow = java.nio.file.LinkOption.NOFOLLOW_LINKS
    def entries = listEntries(folder)
    def foreign = entries.findAll { entry -> !java.nio.file.Files.isRegularFile(entry, nofollow) || !(entry.fileName.toString() ==~ /multiqc.*|llms-full\.txt/) }
    def names = foreign.collect { entry -> folder.relativize(entry).toString() }.sort()
    return names ? "it holds ${quoted(names.take(5))}${names.size() > 5 ? " and ${names.size() - 5} more" : ''}, which MultiQC does not write there" : null
}

// Why a sample's prepared/ is not the folder `virnucpro prepare` writes (its tables, manifest and
// shards/shard_N.tsv, with the command's marker .virnucpro.json), or null when it is
def foreignInPrepared(folder) {
    if (!java.nio.file.Files.isDirectory(folder)) {
        return 'not a folder'
    }
    def names = listEntries(folder).collect { entry -> entry.fileName.toString() }
    def shards = folder.resolve('shards')
    def foreign = names.findAll { name -> !(name in ['.virnucpro.json', '.virnucpro.lock', 'manifest.json', 'chunks.tsv', 'sequences.tsv', 'shards']) }
    if (java.nio.file.Files.isDirectory(shards, java.nio.file.LinkOption.NOFOLLOW_LINKS)) {
        foreign += listEntries(shards).collect { entry -> entry.fileName.toString() }.findAll { name -> !(name ==~ /shard_[0-9]+\.tsv/) }.collect { name -> "shards/${name}" }
    }
    else if ('shards' in names) {
        foreign << 'shards'
    }
    if (foreign) {
        return "it holds ${quoted(foreign.sort().take(5))}${foreign.size() > 5 ? " and ${foreign.size() - 5} more" : ''}, which virnucpro prepare does not write"
    }
    return '.virnucpro.json' in names ? null : 'a folder virnucpro prepare did not write'
}

// A --models folder holds what the tasks will read, checked here by presence only (each task's
// `virnucpro` checks the files and their checksums): manifest.json, else the standard file names of
// a hand-staged copy (CONTRACTS.md "Models directory"), the classifier for `chunk_size` included
// unless it is null (--classifier given). A wrong or empty folder was found only by EMBED, after
// PREPARE ran.
def checkModelsDirectory(String models, chunk_size) {
    def dir = file(models, glob: false)
    if (!dir.exists()) {
        error("--models ${models} does not exist: give the folder written by `virnucpro models download`")
    }
    if (!dir.isDirectory()) {
        error("--models ${models} is not a directory (expected the layout written by `virnucpro models download`)")
    }
    def missing = missingModelFiles(dir, chunk_size)
    def inner = dir.resolve('virnucpro_models') // where --models_store keeps the download
    if (missing && inner.isDirectory() && !missingModelFiles(inner, chunk_size)) {
        error("--models ${models} is the --models_store folder, not a models directory: give the folder the download is kept in, --models ${inner}")
    }
    if (missing) {
        error("--models ${models} is not a models directory: it has no manifest.json, nor ${missing.join(', ')} (the standard file names of a hand-staged copy); `virnucpro models check ${models}` says what is wrong, `virnucpro models download` writes a complete one")
    }
    if (dir.resolve('manifest.json').exists()) {
        checkManifestFiles(models, dir, chunk_size)
    }
    if (chunk_size && dir.resolve('manifest.json').exists()) {
        checkManifestClassifier(models, dir.resolve('manifest.json'), chunk_size)
    }
}

// The files a --models manifest.json lists for what the run uses (both encoders, and the classifier
// of the chunk size unless --classifier replaces it) are there: a missing one was found by EMBED after
// PREPARE ran, or by PREDICT after every EMBED task, and named by its path inside the task. A
// manifest that cannot be read is said by checkManifestClassifier, or by the tasks.
def checkManifestFiles(String models, dir, chunk_size) {
    def read = readModelsManifest(dir.resolve('manifest.json'))
    if (read.problem) {
        return
    }
    def roles = ['esm2', 'dnabert_s'] + (chunk_size ? ["classifier_${chunk_size}".toString()] : [])
    def listed = roles.findResults { role -> read.models[role] instanceof Map && read.models[role].files instanceof List ? read.models[role].files : null }.flatten()
    def missing = listed.collect { name -> name.toString() }.findAll { name -> !java.nio.file.Files.exists(dir.resolve(name)) }
    if (missing) {
        error("--models ${models}: its manifest.json lists ${quoted(missing.take(5))}${missing.size() > 5 ? " and ${missing.size() - 5} more" : ''}, which the folder lacks (or a link to a missing path); `virnucpro models check ${models}` says how to put it right")
    }
}

// A --models manifest.json that records no classifier for the chunk size (or is not JSON) stops the
// run at start: found when the workflow picked the classifier, it was said twice, tasks started.
def checkManifestClassifier(String models, manifest, chunk_size) {
    def read = readModelsManifest(manifest)
    if (read.problem) {
        error("--models ${models}: its manifest.json ${read.problem}; `virnucpro models check ${models}` says what is wrong, `virnucpro models download` writes a complete one")
    }
    def roles = read.models
    def entry = roles["classifier_${chunk_size}".toString()]
    if (!(entry instanceof Map)) {
        def sizes = roles.keySet().findAll { role -> role ==~ /classifier_\d+/ }.collect { role -> role - 'classifier_' }.sort()
        def other = sizes ? "it has the classifier for --chunk_size ${sizes.join(' and ')} only; give that --chunk_size, or" : 'give'
        error("--models ${models} has no classifier for --chunk_size ${chunk_size} (its manifest.json records none): ${other} a --classifier for ${chunk_size}-bp chunks; `virnucpro models check ${models}` says what the folder holds")
    }
    // the classifier (a few MB, hashed here anyway for PREDICT) as recorded: a damaged one was found by
    // PREDICT after every EMBED task; the encoders (gigabytes) are checked by each EMBED task
    (entry.sha256 instanceof Map ? entry.sha256 : [:]).each { name, recorded ->
        def path = manifest.resolveSibling(name.toString())
        def digest = java.nio.file.Files.isRegularFile(path) ? sha256Of(path) : null
        if (digest && digest != recorded.toString().toLowerCase()) {
            error("--models ${models}: ${name} has sha256 ${digest}, but its manifest.json records ${recorded.toString().toLowerCase()} (a corrupt or replaced file); `virnucpro models check ${models}` says how to put it right")
        }
    }
}

// The `models` map of a models folder's manifest.json ([:] when it holds none) as `models`, or why
// it cannot be read as `problem` (words following "its manifest.json"): the one reader of the file
// here. Through an input stream, which every file system of Nextflow's has (s3:// and gs://).
def readModelsManifest(manifest) {
    try {
        def bytes = java.nio.file.Files.newInputStream(manifest).withCloseable { stream -> stream.readAllBytes() }
        def text = java.nio.charset.StandardCharsets.UTF_8.newDecoder().decode(java.nio.ByteBuffer.wrap(bytes)).toString()
        if (!text.trim()) {
            return [models: null, problem: 'is empty (a copy or download cut short?)']
        }
        def parsed = new groovy.json.JsonSlurper().parseText(text)
        return [models: parsed instanceof Map && parsed.models instanceof Map ? parsed.models : [:], problem: null]
    }
    catch (java.nio.charset.CharacterCodingException _e) {
        return [models: null, problem: 'is not UTF-8 text']
    }
    catch (Exception e) { // not JSON; a folder, or unreadable (IOException)
        return [models: null, problem: "cannot be read as JSON (${e.message?.readLines()?.find() ?: e})".toString()]
    }
}

// The standard model file names a models folder without manifest.json lacks (none when it has one).
def missingModelFiles(dir, chunk_size) {
    if (dir.resolve('manifest.json').exists()) {
        return []
    }
    def wanted = ['esm2_t36_3B_UR50D.pt', 'DNABERT-S'] + (chunk_size ? ["${chunk_size}_model.pth".toString()] : [])
    return wanted.findAll { name -> !dir.resolve(name).exists() }
}

// Without a container the MULTIQC task runs the `multiqc` of the PATH, which installing virnucpro
// does not install: said when the run starts, not as its last task failing (after the results are
// published). A warning: under an executor the tasks' PATH may differ from the launching shell's.
def warnIfMultiqcMissing(boolean skip) {
    if (skip || workflow.containerEngine || batchExecutor()) { // batch: MULTIQC runs in its container there
        return
    }
    def found = (System.getenv('PATH') ?: '').tokenize(File.pathSeparator).any { dir -> new File(dir, 'multiqc').canExecute() }
    if (!found) {
        log.warn('multiqc is not on the PATH: without a container the last task (MULTIQC) will fail after the results are published; install it (pip install multiqc) or add --skip_multiqc')
    }
}

// Nextflow writes its execution report in Java's default encoding, the locale's (ASCII under LANG=C,
// or with no locale set, on Java 17): the report stops at the first character that encoding lacks,
// the copyright sign in the DataTables it bundles, said only at the end ("Failed to render execution
// report"). Said when the run starts, with the way out.
def warnIfReportCutShort() {
    def charset = java.nio.charset.Charset.defaultCharset()
    if (!charset.newEncoder().canEncode('\u00a9' as char)) {
        log.warn("This Java writes text as ${charset.name()} (the encoding of its locale), not UTF-8: Nextflow cannot render the execution report (pipeline_info/execution_report_<start>.html) whole and will cut it short; run under a UTF-8 locale (`export LC_ALL=C.UTF-8`) to have it whole")
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
            unknown = queue.toString().tokenize(',').findAll { part -> partitionMissing(part) }
        }
        catch (IOException e) {
            log.warn("--${name} not checked (${e.message})")
        }
        if (unknown) {
            error("--${name} '${queue}': SLURM has no partition ${unknown.join(', ')}; `sinfo -s` lists the partitions you may use")
        }
    }
}

// Under the slurm profile EMBED asks for --gres=gpu:<--gpu_type>:1: a type no node of its partition
// has was refused by sbatch once PREPARE had run, naming neither the option nor the types there are.
// Checked against `sinfo --format=%G` at start-up; no answer from SLURM is a warning.
def checkSlurmGpuType(gpuType, String device, partition) {
    def profiles = workflow.profile.tokenize(',')
    def gpuRequested = device != 'cpu' && (device == 'cuda' || profiles.contains('gpu'))
    if (!profiles.contains('slurm') || !gpuType || !gpuRequested) {
        return
    }
    def command = ['sinfo', '--noheader', '--format=%G'] + (partition ? ["--partition=${partition}".toString()] : [])
    def types
    try {
        types = slurmGpuTypes(commandOutput(command))
    }
    catch (IOException e) {
        log.warn("--gpu_type not checked (${e.message})")
        return
    }
    if (!(gpuType.toString() in types)) {
        def where = partition ? "partition ${partition}" : 'the cluster'
        def found = types.findAll { type -> type }
        def have = found ? "its GPU types: ${found.join(', ')}" : (types ? 'its GPUs have no type: leave --gpu_type out' : 'it lists no GPU')
        error("--gpu_type ${gpuType}: no node of ${where} has GPUs of that type (${have}); `sinfo --format='%P %G'` lists each partition's GPUs (gpu:<type>:<count>)")
    }
}

// The GPU types in `sinfo --format=%G` lines ("gpu:a100:4(S:0-1),gpu:h100:2", "gpu:2", "(null)"):
// null stands for GPUs without a type.
def slurmGpuTypes(String output) {
    return output.readLines()
        .collectMany { line -> line.replaceAll(/\([^)]*\)/, '').tokenize(',') }
        .collect { gres -> gres.trim().tokenize(':') }
        .findAll { parts -> parts && parts[0] == 'gpu' }
        .collect { parts -> parts.size() >= 3 ? parts[1] : null }
        .unique()
}

// The standard output of a command, or IOException with its first line of errors when it fails.
def commandOutput(List command) {
    def process = command.execute()
    def output = new StringBuilder()
    def errors = new StringBuilder()
    process.waitForProcessOutput(output, errors)
    if (process.exitValue() != 0) {
        throw new IOException(errors.toString().readLines().find { line -> line.trim() } ?: "${command[0]} exit ${process.exitValue()}".toString())
    }
    return output.toString()
}

// Under the google profile with the gpu profile or --device cuda, Google Batch needs the type of
// EMBED's GPU (there is no default type): without --gpu_type every EMBED task was refused at
// submission, after PREPARE ran.
def checkGoogleGpuType(gpuType, String device, machineType) {
    def profiles = workflow.profile.tokenize(',')
    def gpuRequested = device != 'cpu' && (device == 'cuda' || profiles.contains('gpu'))
    if (!profiles.contains('google') || !gpuRequested || machineType?.startsWith('template://')) {
        return
    }
    def run = "-profile ${workflow.profile}${profiles.contains('gpu') ? '' : ' --device cuda'}"
    def template = "or an instance template holding the VM and its GPU: --google_machine_type template://NAME"
    if (!gpuType) {
        error("${run}: Google Batch needs the GPU type for EMBED: give --gpu_type (e.g. nvidia-tesla-t4 or nvidia-l4, one your --google_location offers: `gcloud compute accelerator-types list`), ${template}")
    }
    def families = machineType ? machineType.tokenize(',') : []
    def builtIn = googleBuiltInGpus()[gpuType]
    if (gpuType in googleAttachableGpus()) {
        if (!families.every { family -> family.startsWith('n1-') || family.startsWith('custom-') }) {
            error("${run} --gpu_type ${gpuType} --google_machine_type ${machineType}: Compute Engine attaches ${gpuType} to N1 VMs only: give N1 types (e.g. n1-highmem-8, n1-*, or a custom N1 type custom-8-53248), or leave --google_machine_type out (n1-*)")
        }
    } else if (builtIn) {
        if (machineType && !families.every { type -> type ==~ builtIn[2] }) {
            error("${run} --gpu_type ${gpuType} --google_machine_type ${machineType}: ${gpuType} comes built into ${builtIn[0]}* machine types, and EMBED asks for one GPU: give exact types with one (the default: ${builtIn[1]}), leave --google_machine_type out, ${template}")
        }
    } else if (!machineType) {
        error("${run} --gpu_type ${gpuType}: the machine type that GPU attaches to or comes with is not known here (known: ${(googleAttachableGpus() + googleBuiltInGpus().keySet()).join(', ')}): give --google_machine_type, one exact type with one such GPU, ${template}")
    }
}

// The GPU types Compute Engine attaches to a general-purpose VM, all on N1 VMs (EMBED asks for n1-*).
def googleAttachableGpus() {
    return ['nvidia-tesla-t4', 'nvidia-tesla-t4-vws', 'nvidia-tesla-v100', 'nvidia-tesla-p100', 'nvidia-tesla-p100-vws', 'nvidia-tesla-p4', 'nvidia-tesla-p4-vws']
}

// The GPU types that come built into accelerator-optimized machine types: [the family's prefix, the
// one-GPU types EMBED asks for by default (the cheapest that fits its CPUs and memory is taken: a
// retry with more memory takes a larger one where there is one), the names of those with one GPU];
// conf/base.config's machineType holds the same defaults.
def googleBuiltInGpus() {
    return ['nvidia-l4': ['g2-', 'g2-standard-12,g2-standard-16,g2-standard-32', /g2-standard-(4|8|12|16|32)/],
            'nvidia-tesla-a100': ['a2-highgpu-', 'a2-highgpu-1g', /a2-highgpu-1g/],
            'nvidia-a100-80gb': ['a2-ultragpu-', 'a2-ultragpu-1g', /a2-ultragpu-1g/],
            'nvidia-h100-80gb': ['a3-highgpu-', 'a3-highgpu-1g', /a3-highgpu-1g/]]
}

// Whether SLURM says it has no partition `part` ("Partition X not found"); any other failure of
// scontrol (installed but no controller reachable, no configuration) is no answer: IOException.
def partitionMissing(String part) {
    def scontrol = ['scontrol', 'show', 'partition', part].execute()
    def output = new StringBuilder()
    scontrol.waitForProcessOutput(output, output)
    if (scontrol.exitValue() == 0) {
        return false
    }
    if (output.toString().contains('not found')) {
        return true
    }
    throw new IOException(output.toString().readLines().find { line -> line.trim() } ?: "scontrol exit ${scontrol.exitValue()}")
}

// EMBED checkpoints: --checkpoint_dir, else next to the work directory when that is a filesystem
// path the tasks can write (local disk, NFS, Lustre, GPFS); on object storage (s3://, gs://) there is
// no default and the CLI keeps them inside the task directory (set --checkpoint_dir to a mounted
// path instead). Given as an absolute path (tasks run in their own folders, containers mount it at
// that path), and made here, as the user, before any container mounts it (Docker would create a
// missing one owned by root). Not under AWS or Google Batch: the tasks run on other hosts, where the
// folder must be mounted (docs/usage.md), and this machine may have no such path.
// A container mounts it with `docker --volume SRC:DST` or `apptainer --bind SRC`, which read ':'
// (and Apptainer/Singularity ',', between mounts) as their own syntax: such a folder is refused under them. Quotes
// and spaces are quoted (conf/modules.config); the characters no task script may hold are refused
// with the other parameters' paths (checkParameterPaths).
def checkpointDir(String requested, work_dir) {
    if (requested && requested.contains('://')) {
        error("--checkpoint_dir ${requested}: checkpoints need a file system path every task can write (local disk, NFS, Lustre, GPFS), not object storage")
    }
    def dir = requested ? file(requested, glob: false) : (work_dir.toUri().getScheme() == 'file' ? work_dir.resolve('virnucpro-checkpoints') : null)
    def separators = [docker: /:/, singularity: /[:,]/, apptainer: /[:,]/][workflow.containerEngine]
    def mountSyntax = dir && separators ? dir.toString().find(separators) : null
    if (mountSyntax) {
        error("--checkpoint_dir ${dir}: '${mountSyntax}' in the checkpoint folder cannot be mounted into ${workflow.containerEngine} containers (it separates the parts of a mount); give another --checkpoint_dir, or a link to this one whose path has none of them")
    }
    if (dir && dir.toUri().getScheme() == 'file' && !batchExecutor()) { // batch: a folder of the hosts, not this one
        refuseUnwritableCheckpointDir(dir, requested as boolean)
    }
    return dir ? dir.toString() : ''
}

// EMBED tasks are keyed by their command, which names the checkpoint folder, the token budget and
// whether to compile: a -resume giving another of these embeds every finished shard again (neither
// budget nor compiling changes the vectors). Each session records in the work directory every set
// of settings its EMBED tasks were keyed by (recordEmbedSettings), and a -resume of that session
// giving settings none of them had is told so at start-up, with the options that reuse the shards
// of its latest set.
def warnIfEmbedKeyChanged(record, Map settings) {
    if (workflow.preview || !workflow.resume || !java.nio.file.Files.isRegularFile(record)) {
        return
    }
    def now = embedSettingsText(settings)
    def sets = recordedEmbedSettings(record.text)
    if (!sets || sets.any { set -> keyedAlike(set, now) }) {
        return
    }
    def earlier = sets.last()
    now.each { name, value ->
        if (earlier.containsKey(name) && earlier[name] != value) {
            def shown = earlier[name] ?: (name == 'checkpoint_dir' ? 'none' : 'not given')
            def keyed = name == 'checkpoint_dir' ? 'the checkpoint folder' : 'their command line'
            log.warn("--${name} ${value ?: '(none)'}: the run this -resume continues used ${shown}, and EMBED tasks are keyed by ${keyed}, so every shard will be embedded again; to reuse the finished ones, stop now (Ctrl-C) and resume with --${name} ${earlier[name] ?: 'left out'}")
        }
    }
}

// Where this session's EMBED settings are recorded: virnucpro-sessions/<session id> in the work directory.
def embedSettingsRecord() {
    return workflow.workDir.resolve('virnucpro-sessions').resolve(workflow.sessionId.toString())
}

// The EMBED settings as name -> text, as they are recorded and compared.
def embedSettingsText(Map settings) {
    return settings.collectEntries { name, value -> [(name): value == null ? '' : value.toString()] }
}

// Whether a recorded set keys EMBED tasks as `now` does: every setting it recorded has the same value
// (the oldest records hold the checkpoint folder alone).
def keyedAlike(Map recorded, Map now) {
    return recorded.every { name, value -> !now.containsKey(name) || now[name] == value }
}

// Adds this run's settings to its session's record, as its latest set, once the run has a shard
// embedded (or found one cached): a run stopped or failed before that keyed no shard by them, and
// one that failed after it (in PREDICT, or stopped mid-run) did. One JSON object per line, written
// whole to a temporary file then moved into place.
def recordEmbedSettings(record, Map settings) {
    def now = embedSettingsText(settings)
    try {
        def sets = java.nio.file.Files.isRegularFile(record) ? recordedEmbedSettings(record.text) : []
        def text = (sets.findAll { set -> set != now } + [now]).collect { set -> groovy.json.JsonOutput.toJson(set) + '\n' }.join('')
        java.nio.file.Files.createDirectories(record.parent)
        if (record.toUri().scheme != 'file') {
            record.text = text // object storage (s3://, gs://): a whole object, and no atomic move
            return
        }
        def partial = record.resolveSibling(".${record.fileName}.tmp")
        java.nio.file.Files.write(partial, text.getBytes('UTF-8'))
        java.nio.file.Files.move(partial, record, java.nio.file.StandardCopyOption.REPLACE_EXISTING, java.nio.file.StandardCopyOption.ATOMIC_MOVE)
    }
    catch (Exception e) { // never the run's end: it is called from a channel's subscriber
        log.warn("EMBED settings of this session not recorded in ${record} (${e}): a later -resume changing --checkpoint_dir, --token_budget or --compile will not be warned")
    }
}

// The sets of settings a session recorded, oldest first, each name -> value as text: a JSON object
// per line; earlier versions wrote one set as `name<TAB>value` lines, or the checkpoint folder alone.
def recordedEmbedSettings(String text) {
    def lines = text.readLines().findAll { line -> line.trim() }
    if (lines.size() == 1 && !lines[0].contains('\t') && !lines[0].startsWith('{')) {
        return [[checkpoint_dir: lines[0].trim()]]
    }
    if (lines && !lines[0].startsWith('{')) {
        return [lines.findAll { line -> line.contains('\t') }.collectEntries { line ->
            def cut = line.indexOf('\t')
            [(line.substring(0, cut)): line.substring(cut + 1)]
        }]
    }
    return lines.findResults { line ->
        try {
            def set = new groovy.json.JsonSlurper().parseText(line)
            return set instanceof Map ? set.collectEntries { name, value -> [(name): value == null ? '' : value.toString()] } : null
        }
        catch (groovy.json.JsonException _e) {
            return null // a line cut short by a full disk: the others still count
        }
    }
}

// A checkpoint folder this user cannot make or write was found only by EMBED (exit 10, after
// PREPARE ran, its hint not naming --checkpoint_dir): refused here, naming it and why. Made here
// unless -preview, which writes nothing (then the nearest existing folder must be writable).
def refuseUnwritableCheckpointDir(dir, boolean given) {
    def problem = unwritableFolderProblem(dir, !workflow.preview)
    if (problem && given) {
        error("--checkpoint_dir ${dir} ${problem}: EMBED keeps its checkpoints there; give a --checkpoint_dir you can write into, or make this one writable for you")
    }
    if (problem) {
        error("The checkpoint folder ${dir} (the default, beside the work directory) ${problem}: give a --checkpoint_dir you can write into")
    }
}

// Why this user cannot make files in the folder `dir`, or null when it can: it, or the nearest
// folder above it that exists, is not a folder or not one this user may enter and write into (its
// permissions, another user's folder, a read-only file system). It is made first when `create`.
def unwritableFolderProblem(dir, boolean create) {
    def link = danglingLink(dir)
    if (link) {
        return "cannot be created: ${link} is a link to ${linkTarget(link, 40)}, which does not exist (make that folder, or remove the link)".toString()
    }
    def failure = create && !java.nio.file.Files.isDirectory(dir) ? createdFolderFailure(dir) : null
    def existing = nearestExisting(dir.toAbsolutePath())
    def where = existing == dir.toAbsolutePath() ? '' : 'cannot be created: '
    if (!java.nio.file.Files.isDirectory(existing)) {
        return "${where ?: 'is not usable: '}${existing} is not a folder".toString()
    }
    def action = !java.nio.file.Files.isExecutable(existing) ? 'enter' : (!java.nio.file.Files.isWritable(existing) ? 'write into' : null)
    if (action) {
        return "${where ?: 'is not usable: '}this user (${System.getProperty('user.name')}) cannot ${action} ${existing} (its permissions, or a read-only file system)".toString()
    }
    return failure ? "cannot be created (${failure})".toString() : null
}

// Files.createDirectories, saying what failed instead of throwing, else null.
def createdFolderFailure(dir) {
    try {
        java.nio.file.Files.createDirectories(dir)
        return null
    }
    catch (IOException e) {
        return e.toString()
    }
}

// The first link on the way to `path` (it, or a folder above it) whose target does not exist, else
// null: making the folder then failed with a bare "File or directory already exists".
def danglingLink(path) {
    def absolute = path.toAbsolutePath().normalize()
    def steps = absolute.nameCount ? (1..absolute.nameCount) : []  // `/` has none (1..0 counts down)
    return steps.collect { i -> absolute.root.resolve(absolute.subpath(0, i)) }.find { step ->
        java.nio.file.Files.isSymbolicLink(step) && java.nio.file.Files.notExists(step) // not: cannot be looked at
    }
}

// Where a chain of links ends (a link to a link to ... a missing path), for the message that names it.
// At most `hops` links are followed (a loop of links ends there).
def linkTarget(link, int hops) {
    if (hops == 0 || !java.nio.file.Files.isSymbolicLink(link)) {
        return link
    }
    return linkTarget(link.resolveSibling(java.nio.file.Files.readSymbolicLink(link)).normalize(), hops - 1)
}

// `path` if it exists, else the nearest folder above it that does.
def nearestExisting(path) {
    return path == null || java.nio.file.Files.exists(path) ? path : nearestExisting(path.parent)
}

// The sha256 of the classifier file PREDICT loads (`files`: classifierFiles' or userClassifierFiles'),
// read when the run starts (a few MB): each PREDICT task checks it scored with it (bin/pinned_models.py),
// so a classifier replaced during the run fails the task instead of scoring samples with two; '' when
// the file is not there (PREDICT says why).
def classifierSha256(files, boolean user) {
    def classifier = !user && files.size() > 1 && files[0].name == 'manifest.json' ? files[1] : files[0]
    if (!java.nio.file.Files.isRegularFile(classifier)) {
        return ''
    }
    return sha256Of(classifier)
}

// The classifier files PREDICT needs from a models directory: the classifier for the chunk size
// and the manifest that pins its checksum, or the standard file name in a hand-staged directory.
def classifierFiles(models_dir, chunk_size) {
    def manifest = models_dir.resolve('manifest.json')
    if (!manifest.exists()) {
        return [models_dir.resolve("${chunk_size}_model.pth")]
    }
    def read = readModelsManifest(manifest)
    if (read.problem) {
        error("${models_dir}: its manifest.json ${read.problem} (see `virnucpro models check ${models_dir}`)")
    }
    def entry = read.models["classifier_${chunk_size}".toString()]
    if (!(entry instanceof Map)) {
        error("${models_dir} has no classifier for --chunk_size ${chunk_size} (see `virnucpro models check ${models_dir}`)")
    }
    return [manifest] + entry.files.collect { name -> models_dir.resolve(name) }
}

// A --classifier that a models manifest records as the classifier of the other standard chunk size
// (by checksum: the manifest of its folder, of the folder a link to it leads into, or of --models)
// stops the run at start, not after every EMBED task: PREDICT would refuse it (as `virnucpro
// predict` does) once the GPU hours are spent, or, given no --models, score with it. A manifest that
// cannot be read is left to PREDICT, which says what is wrong with it.
def checkClassifierChunkSize(String classifier, chunk_size, String models = null) {
    def standard = [300, 500]
    def path = file(classifier, glob: false)
    if (!(chunk_size in standard) || path.name == 'manifest.json' || !java.nio.file.Files.isRegularFile(path)) {
        return
    }
    def other = (standard - [chunk_size])[0]
    def folders = [path.toAbsolutePath().parent, path.toRealPath().parent] + (models ? [file(models, glob: false)] : [])
    def manifests = folders.unique().collect { folder -> folder.resolve('manifest.json') }.findAll { manifest -> java.nio.file.Files.isRegularFile(manifest) }
    def digest = manifests ? sha256Of(path) : null
    def manifest = manifests.find { candidate -> recordsClassifierOfSize(candidate, other, digest) }
    if (manifest) {
        error("--classifier ${classifier} is the classifier for ${other}-bp chunks (${manifest} records it), but --chunk_size is ${chunk_size}: give the ${chunk_size}-bp classifier, or --chunk_size ${other}")
    }
}

// Whether a models manifest records a classifier file of this sha256 for `size`-bp chunks
def recordsClassifierOfSize(manifest, size, String digest) {
    def read = readModelsManifest(manifest)
    def entry = read.models ? read.models["classifier_${size}".toString()] : null
    def recorded = entry instanceof Map ? entry.sha256 : null
    return recorded instanceof Map && digest in recorded.values().collect { sha -> sha.toString().toLowerCase() }
}

// A --classifier that a models manifest records (that of its folder, of the folder a link to it
// leads into, or of --models) belongs to that folder's encoders: when --models holds others, PREDICT
// refuses the embeddings (as `virnucpro predict` does) once every EMBED task has run; stopped here,
// naming both folders. Manifests that cannot tell (no sha256 of the same files) are left to PREDICT.
def checkClassifierEncoders(String classifier, String models) {
    def path = file(classifier, glob: false)
    def dir = file(models, glob: false)
    def used = java.nio.file.Files.isDirectory(dir) ? encoderPins(dir) : null
    if (!used || !java.nio.file.Files.isRegularFile(path)) {
        return
    }
    def digest = sha256Of(path)
    def owners = [path.toAbsolutePath().parent, path.toRealPath().parent, dir].unique().findAll { folder -> recordsClassifier(folder, digest) }
    def clashes = owners.collect { folder -> [folder, encoderClash(encoderPins(folder), used)] }
    if (clashes && clashes.every { pair -> pair[1] }) {
        error("--classifier ${classifier} belongs to the models in ${clashes[0][0]} (its manifest.json records it), but --models ${models} holds another ${clashes[0][1]} model: PREDICT would refuse the embeddings after every EMBED task; give the classifier made for the models in ${models} (or leave --classifier out), or --models ${clashes[0][0]}")
    }
}

// A --classifier that the manifest.json of its folder (or of the folder a link to it leads into)
// records by its name with another sha256 is a damaged or replaced model file: PREDICT would refuse
// it (exit 4, as `virnucpro predict` does) once every EMBED task has run; stopped here, naming the
// folder. A manifest that cannot be read is left to PREDICT, which says what is wrong with it.
def checkClassifierRecord(String classifier) {
    def path = file(classifier, glob: false)
    if (!java.nio.file.Files.isRegularFile(path)) {
        return
    }
    [path.toAbsolutePath(), path.toRealPath()].unique().each { named ->
        def manifest = named.resolveSibling('manifest.json')
        def read = java.nio.file.Files.isRegularFile(manifest) ? readModelsManifest(manifest) : [models: null]
        def recorded = read.models ? read.models.findResults { role, entry -> role.toString().startsWith('classifier_') && entry instanceof Map && entry.sha256 instanceof Map ? entry.sha256[named.name.toString()] : null }.find { sha -> sha } : null
        def digest = recorded ? sha256Of(path) : null
        if (recorded && digest != recorded.toString().toLowerCase()) {
            error("--classifier ${classifier} has sha256 ${digest}, but ${manifest} records ${recorded.toString().toLowerCase()} for ${named.name} (a corrupt or replaced file): check it with `virnucpro models check ${named.parent}` and put it right; keep a classifier of your own under a name the manifest does not record")
        }
    }
}

// Whether the models manifest of `folder` records a classifier file of this sha256
def recordsClassifier(folder, String digest) {
    def manifest = folder.resolve('manifest.json')
    def read = java.nio.file.Files.isRegularFile(manifest) ? readModelsManifest(manifest) : [models: null]
    return read.models ? read.models.any { role, entry -> role.toString().startsWith('classifier_') && entry instanceof Map && entry.sha256 instanceof Map && digest in entry.sha256.values().collect { sha -> sha.toString().toLowerCase() } } : false
}

// The first encoder whose files two encoderPins record with other sha256, or null: compared on the
// files that make an encoder's identity (virnucpro/models/store.py) only where both record the same ones
def encoderClash(pins, used) {
    return ['esm2', 'dnabert_s'].find { role ->
        def mine = identityShas(pins?.get(role), role)
        def theirs = identityShas(used?.get(role), role)
        mine && theirs && mine.keySet() == theirs.keySet() && mine != theirs
    }
}

// file name -> sha256 (lower case) of the files of an encoder's manifest entry that make its identity
def identityShas(entry, String role) {
    def recorded = entry instanceof Map && entry.sha256 instanceof Map ? entry.sha256 : [:]
    def names = role == 'esm2' ? ['.pt'] : ['config.json', 'model.safetensors', 'pytorch_model.bin', 'tokenizer.json']
    return recorded.findAll { rel, _sha ->
        def name = rel.toString().tokenize('/').last()
        role == 'esm2' ? name.endsWith('.pt') && !name.endsWith('-contact-regression.pt') : name in names
    }.collectEntries { rel, sha -> [(rel.toString().tokenize('/').last()): sha.toString().toLowerCase()] }
}

// The sha256 of a file, streamed through the digest (never read whole)
def sha256Of(path) {
    def digest = java.security.MessageDigest.getInstance('SHA-256')
    java.nio.file.Files.newInputStream(path).withCloseable { stream ->
        new java.security.DigestInputStream(stream, digest).transferTo(java.io.OutputStream.nullOutputStream())
    }
    return digest.digest().encodeHex().toString()
}

// A --classifier with the models manifest of its folder when there is one: PREDICT then refuses a
// classifier that manifest records for the other chunk size, as `virnucpro predict` does when it
// reads the classifier beside its manifest (staged alone, a tiny one for 500-bp chunks passed at 300)
// (a classifier reached through a link: the manifest beside the link, else the one beside its target,
// with the target staged under its own name, the name that manifest knows it by: under the link's,
// PREDICT would compare it with another file the manifest records under that name)
def userClassifierFiles(classifier) {
    def staged = [classifier, classifier.toRealPath()].find { path -> path.resolveSibling('manifest.json').isFile() }
    if (staged == null || staged.name == 'manifest.json') {
        return [classifier]
    }
    return [staged, staged.resolveSibling('manifest.json')]
}

// EMBED's key for a models folder: the path, size and modification time of each file the encoders
// read: ESM-2's .pt files at the top and DNABERT-S's folder. Nextflow keys a folder input by the
// folder's own entry (EMBED caches it 'lenient': its path), which misses a model file replaced
// inside it (in DNABERT-S/, or rewritten in place), and changes whenever anything is written there.
// Left out: what does not change an embedding (the classifiers, PREDICT's; a README) and what
// virnucpro writes there itself (the checksum cache, locks and temporaries: hidden names; a
// download's .part files; the fp16 copy of ESM-2 and the manifest recording it), which made
// -resume embed every shard again after the first run on a folder. The manifest's entries of the
// encoders (`pins`, from encoderPins: which weights EMBED loads) are in it; its fp16 record is not.
def modelsCacheKey(dir, pins) {
    def files = []
    dir.eachFileRecurse(groovy.io.FileType.FILES) { model ->
        def rel = dir.relativize(model)
        if (!isModelsBookkeeping(rel)) {
            files << "${rel}\t${model.size()}\t${model.lastModified()}".toString()
        }
    }
    def entries = pins == null ? ['manifest.json\tunreadable'] : pins.collect { role, entry ->
        "manifest.json ${role}\t${groovy.json.JsonOutput.toJson(entry)}".toString()
    }
    return (files.sort() + entries).join('\n').md5()
}

// The files and checksums the models manifest records for each encoder, read once when the run
// starts: EMBED's key holds them, and every EMBED task checks the folder it reads and the embedding
// it writes against them (bin/pinned_models.py), so that a folder changed during the run fails the
// task instead of mixing two model sets. [:] without a manifest; null when it cannot be read (EMBED
// then refuses it itself).
def encoderPins(dir) {
    def manifest = dir.resolve('manifest.json')
    if (!java.nio.file.Files.isRegularFile(manifest)) {
        return [:]
    }
    def read = readModelsManifest(manifest)
    if (read.problem) {
        return null
    }
    return ['esm2', 'dnabert_s'].collectEntries { role ->
        def entry = read.models[role] instanceof Map ? read.models[role] : [:]
        def sha256 = entry.sha256 instanceof Map ? entry.sha256.sort() : entry.sha256 // as written, in any order
        [(role): [files: entry.files, sha256: sha256]]
    }
}

def isModelsBookkeeping(rel) {
    def names = rel.iterator().collect { part -> part.toString() }
    return names.any { name -> name.startsWith('.') || name == '__pycache__' } || (names.size() == 1 && !names[0].endsWith('.pt')) ||
        ['.part', '.tmp', '.fp16.safetensors'].any { ending -> names.last().endsWith(ending) }
}

// Whether a PREPARE shard holds no ORF record (the only shard of a sample with no ORF): its first two
// lines are the format line and the column header (CONTRACTS.md), so a third is a record. Reads three
// lines at most, whatever the shard's size.
def shardHasNoRecords(shard) {
    return shard.withReader('UTF-8') { reader -> reader.readLine(); reader.readLine(); reader.readLine() == null }
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
