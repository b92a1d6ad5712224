/*
 * Parameter and samplesheet validation, the start-up summary and the --help text, all read from the
 * pipeline's JSON schemas (nextflow_schema.json, assets/schema_input.json), without any plugin.
 *
 * Functions only, in the strict Nextflow syntax (no imports, classes, loops or switch):
 *   validateParameters(params, schemaPath, words) every problem of the parameters at once, then error()
 *   commandLineWords(workflow.commandLine)        the words of the command line, for validateParameters
 *   samplesheetToList(sheetPath, schemaPath)      a CSV/TSV/YAML/JSON sheet as [meta, file, ...] rows
 *   paramsSummaryLog(params, schemaPath, workflow) the parameters that differ from their defaults
 *   paramsHelp(schemaPath, params, command)       the --help, --help <param> and --help_full text
 *
 * The subset of JSON schema understood: `$defs` (or `definitions`) groups referenced from `allOf`
 * plus top-level `properties`; `required`; `type` (one or a list); `enum`; `pattern`; `minimum`,
 * `maximum`, `exclusiveMinimum`, `exclusiveMaximum`; `minLength`, `maxLength`; `minItems`, `maxItems`
 * (samplesheets); and nf-schema's `format` (file-path, directory-path, path, file-path-pattern) with
 * `exists`, `errorMessage` and `meta`. Relative paths resolve against the launch directory, as with
 * nf-schema (and Nextflow's own file()), not against the samplesheet's folder.
 *
 * Beyond the schema, for the pipeline's inputs: a local file that must exist (an --input match, a
 * samplesheet file) may not be empty, and what a pattern names or matches must be files to read
 * (not a folder, a link to nothing or a pipe, which Nextflow's files() returns or drops unsaid); a
 * YAML/JSON samplesheet cell of a text column may not be read as a number, boolean or date (`010`
 * as 8); a CSV/TSV header may not name a schema column twice, nor
 * end a line with a lone CR. A parameter with a default may not be given as blank or null (a params
 * file's `threshold:`); nor any parameter twice (Nextflow keeps the last: an earlier --input's records
 * were missing), on the command line or as a key of the -params-file; nor a text parameter as a
 * number whose text Nextflow changed (`--outdir 010` wrote into 10/); a path may not start or end with a blank or line break, nor start with `~`
 * (Nextflow does not expand it), even where a folder `~` in the launch directory holds it. A
 * `pattern`'s `$` ends the text, as in JSON schema. Files are read as UTF-8 whatever the locale; a
 * path holding characters other than ASCII is refused where Java's file-name encoding is not UTF-8
 * (LANG=C), as Java cannot use it there.
 */

// ================================================================================================
// Parameters
// ================================================================================================

// Checks every parameter against the schema and stops the run (before any task) listing every problem;
// `words`, the command line's (commandLineWords), tell what was typed and how many times.
def validateParameters(Map parameters, String schemaPath, List words = []) {
    def schema = loadJsonSchema(schemaPath)
    def properties = schemaProperties(schema)
    def required = schemaRequired(schema)
    def typed = commandLineParameters(words)
    def problems = repeatedParameterProblems(typed) + paramsFileProblems(words)
    problems.addAll(unknownParameterProblems(parameters, properties.keySet()))
    properties.each { name, spec ->
        parameterProblems(parameters, name.toString(), spec as Map, name in required, typed[name.toString()]).each { problem ->
            problems << "* --${name}: ${problem}".toString()
        }
    }
    if (problems) {
        error("Invalid parameters (${problems.size()} problem${problems.size() == 1 ? '' : 's'}; see --help):\n" + problems.join('\n'))
    }
}

// The problems of one parameter. Unset, it may be left so unless required; but a parameter given as
// blank or null (a params file's `chunk_size:`) that has a default would reach the tasks as
// `--chunk-size null` in place of that default, so it is refused, naming the default.
def parameterProblems(Map parameters, String name, Map spec, boolean required, List typed) {
    def value = parameters[name]
    if (!isMissing(value)) {
        def changed = numberForTextProblem(value, spec, typed)
        // a number is checked as typed: Nextflow reads 99999999999999999999 as 1.0E20
        def raw = value instanceof Number && typed && typed.last() != null ? typed.last() : value
        return changed ? [changed] : checkValue(raw, spec, false)
    }
    if (required) {
        return ['required, but not given']
    }
    if (parameters.containsKey(name) && !isMissing(spec['default'])) {
        return ["given without a value (blank or null); leave it out to get the default ${describe(spec['default'])}".toString()]
    }
    return []
}

// A text parameter that arrived as a number, unless the number reads as what was typed
// (`--google_project 123`): Nextflow reads `--outdir 010` as 10 and `1.10` as 1.1, and a params file
// or config its unquoted 010 as 8 (octal), and a run went on with the changed text.
def numberForTextProblem(value, Map spec, List typed) {
    def types = spec.type instanceof List ? spec.type.collect { type -> type.toString() } : [spec.type?.toString()]
    if (!(value instanceof Number) || !('string' in types) || 'number' in types || 'integer' in types) {
        return null
    }
    def raw = typed ? typed.last() : null
    if (raw != null && raw == value.toString()) {
        return null
    }
    if (raw != null) {
        return "Nextflow reads '${visible(raw)}' on the command line as the number ${value}: give it quoted in a -params-file, or a path as ./${visible(raw)}".toString()
    }
    return "${value} is a number, not text (a params file or config reads an unquoted 010 as 8, 1.10 as 1.1): quote it".toString()
}

// The words of the command line, from Nextflow's record of it (workflow.commandLine): a word with a
// blank in single quotes, a quote outside them escaped by a backslash.
def commandLineWords(String line) {
    def words = []
    def word = new StringBuilder()
    def state = [quoted: false, started: false, escaped: false]
    (line ?: '').each { c ->
        if (state.escaped || (state.quoted && c != "'")) {
            word.append(c)
            state.escaped = false
        }
        else if (c == '\\') {
            state.escaped = true
            state.started = true
        }
        else if (c == "'") {
            state.quoted = !state.quoted
            state.started = true
        }
        else if (c == ' ') {
            if (state.started) {
                words << word.toString()
            }
            word.setLength(0)
            state.started = false
        }
        else {
            word.append(c)
            state.started = true
        }
    }
    return state.started ? words + [word.toString()] : words
}

// Each parameter the command line gives (`--name value`, `--name=value`, a lone `--name`: null), with
// the text of each time it is given.
def commandLineParameters(List words) {
    def given = [:]
    words.eachWithIndex { word, i ->
        if (word.startsWith('--') && word.length() > 2) {
            def parts = word.substring(2).split('=', 2)
            def next = i + 1 < words.size() ? words[i + 1] : null
            def value = parts.size() == 2 ? parts[1] : (next != null && !(next ==~ /-[^\d.].*/) ? next : null)
            given[parts[0]] = (given[parts[0]] ?: []) + [value]
        }
    }
    return given
}

// A parameter given more than once on the command line: Nextflow keeps the last, silently.
def repeatedParameterProblems(Map typed) {
    return typed.findAll { _name, values -> values.size() > 1 }.collect { name, values ->
        def shown = values.collect { value -> value == null ? 'no value' : "'${visible(value.toString())}'" }.join(', ')
        def lost = name == 'input' ? ": the records of the others would be missing; give several files as one quoted glob (--input 'reads/*.fa') or a samplesheet" : '; give it once'
        "* --${name}: given ${values.size()} times (${shown}), and Nextflow keeps only the last${lost}".toString()
    }
}

// A key repeated in the -params-file (Nextflow keeps the last, silently), found by reading it again
// with the samplesheets' strict readers; a file Nextflow read but these cannot is left to Nextflow.
def paramsFileProblems(List words) {
    def at = words.indexOf('-params-file')
    def name = at >= 0 && at + 1 < words.size() ? words[at + 1] : null
    if (name == null || name ==~ /^[a-zA-Z][a-zA-Z0-9+.-]*:\/\/.*/) {
        return []
    }
    try {
        def text = utf8Text(file(name, glob: false), "-params-file ${name}")
        name.toLowerCase(Locale.ROOT).endsWith('.json') ? strictJson(text) : strictYaml(text)
    }
    catch (org.yaml.snakeyaml.constructor.DuplicateKeyException e) {
        def line = e.problemMark ? " (line ${e.problemMark.line + 1})" : ''
        return ["* -params-file ${name}: ${e.problem}${line}, and Nextflow keeps only the last value; give each parameter once".toString()]
    }
    catch (Exception _e) {
        return []
    }
    return []
}

// One problem per parameter the schema does not know, naming the closest known one.
def unknownParameterProblems(Map parameters, Collection known) {
    def unknown = parameters.keySet().collect { key -> key.toString() }.findAll { key ->
        !(key in known) && !(key in ignoredParameterNames()) && !(kebabToCamel(key) in known) && !(camelToKebab(key) in known)
    }
    // Nextflow may give `--foo-bar` as both `foo-bar` and `fooBar`: report it once, as typed.
    def reported = unknown.findAll { key -> camelToKebab(key) == key || !(camelToKebab(key) in unknown) }
    return reported.sort().collect { key ->
        def closest = closestName(key, known)
        def hint = retiredCapHint(key, parameters[key]) ?: (closest ? " (did you mean --${closest}?)" : '')
        "* --${key}: not a parameter of this pipeline${hint}".toString()
    }
}

// nf-core pipelines before Nextflow 24.04 capped requests with --max_cpus/--max_memory/--max_time;
// this one has process.resourceLimits, set in a -c file: said with the value given when it reads as
// one (64.GB, 48.h, 16), else an example.
def retiredCapHint(String key, value) {
    def caps = [max_cpus: ['cpus', /\d+/, '32'], max_memory: ['memory', /\d+(\.\d+)?\.?[KMGT]?B/, '256.GB'],
                max_time: ['time', /\d+(\.\d+)?\.?(ms|s|m|h|d)/, '48.h']]
    def cap = caps[camelToKebab(key).replace('-', '_')]
    if (!cap) {
        return null
    }
    def given = value?.toString()?.trim()
    def amount = given ==~ cap[1] ? given.replaceFirst(/^([\d.]*\d)\.?([A-Za-z]+)$/, '$1.$2') : cap[2]
    return "; caps on the tasks' requests are set with process.resourceLimits in a config file given with -c: `process.resourceLimits = [${cap[0]}: ${amount}]` (docs/usage.md)".toString()
}

// Keys that may appear in params without being the pipeline's (none seen from Nextflow 24.10 on;
// kept as one list so that one can be added where a launcher or test framework injects its own).
def ignoredParameterNames() {
    return ['nf_test_output']
}

// `foo-bar` -> `fooBar`
def kebabToCamel(String name) {
    return name.replaceAll(/-([a-zA-Z0-9])/) { match -> match[1].toUpperCase(Locale.ROOT) }
}

// `fooBar` -> `foo-bar`
def camelToKebab(String name) {
    return name.replaceAll(/([a-z0-9])([A-Z])/) { match -> "${match[1]}-${match[2].toLowerCase(Locale.ROOT)}" }
}

// The known name nearest to `name` (ignoring case, `-` and `_`), or null when none is near enough.
def closestName(String name, Collection known) {
    def ranked = known.collect { candidate ->
        [candidate, editDistance(plainName(name), plainName(candidate.toString())), editDistance(name, candidate.toString())]
    }.sort { a, b -> a[1] <=> b[1] ?: a[2] <=> b[2] ?: a[0] <=> b[0] }
    if (!ranked) {
        return null
    }
    def best = ranked.first()
    return best[1] <= Math.max(2, (int) (plainName(name).length() / 3)) ? best[0] : null
}

// A parameter name for comparing: lower case, without `-` and `_`.
def plainName(String name) {
    return name.toLowerCase(Locale.ROOT).replaceAll(/[-_]/, '')
}

// Levenshtein distance: insertions, deletions and substitutions, one row of the table at a time.
def editDistance(String a, String b) {
    if (a.isEmpty() || b.isEmpty()) {
        return a.length() + b.length()
    }
    def previous = (0..b.length()).collect { j -> j }
    (1..a.length()).each { i ->
        def current = [i]
        (1..b.length()).each { j ->
            def cost = a.charAt(i - 1) == b.charAt(j - 1) ? 0 : 1
            current << [previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost].min()
        }
        previous = current
    }
    return previous[b.length()]
}

// ================================================================================================
// The schema
// ================================================================================================

// The schema file as a Map; stops the run when it is missing or not JSON.
def loadJsonSchema(String schemaPath) {
    def path = file(schemaPath, glob: false)
    if (!path.isFile()) {
        error("JSON schema ${schemaPath} not found")
    }
    def text = utf8Text(path, "JSON schema ${schemaPath}")
    try {
        return new groovy.json.JsonSlurper().parseText(text) as Map
    }
    catch (Exception e) {
        error("JSON schema ${schemaPath} is not valid JSON: ${e.message}")
    }
}

// The parameter groups in `allOf` order, then the top-level properties: [name, title, description, properties, required].
def schemaGroups(Map schema) {
    def definitions = (schema['$defs'] ?: schema['definitions'] ?: [:]) as Map
    def groups = []
    (schema.allOf ?: []).each { entry ->
        def ref = (entry as Map)['$ref']?.toString()
        def name = ref?.replaceFirst('^#/(\\$defs|definitions)/', '')
        def group = name ? definitions[name] as Map : null
        if (group) {
            groups << [name, group.title ?: name, group.description ?: '', (group.properties ?: [:]) as Map, (group.required ?: []) as List]
        }
    }
    if (schema.properties) {
        groups << ['other', 'Other parameters', '', schema.properties as Map, (schema.required ?: []) as List]
    }
    return groups
}

// Every parameter of the schema: name -> its schema.
def schemaProperties(Map schema) {
    def properties = [:]
    schemaGroups(schema).each { group -> properties.putAll(group[3] as Map) }
    return properties
}

// The names of the required parameters, at top level and in every group.
def schemaRequired(Map schema) {
    return schemaGroups(schema).collectMany { group -> group[4] as List }.unique()
}

// An unset value: absent, null or an empty string.
def isMissing(value) {
    return value == null || (value instanceof CharSequence && value.toString().isEmpty())
}

// ================================================================================================
// One value against its schema (parameters and samplesheet cells)
// ================================================================================================

// The problems of one value (never null); `fromText` says it came from a CSV/TSV cell, where every value is a string.
def checkValue(value, Map spec, boolean fromText) {
    def types = spec.type == null ? [] : (spec.type instanceof List ? spec.type : [spec.type]).collect { type -> type.toString() }
    def converted = value
    if (types) {
        def matches = types.collect { type -> convertToType(value, type, fromText) }.findAll { result -> result[0] }
        if (!matches) {
            return [typeProblem(value, types)]
        }
        converted = matches.first()[1]
    }
    def problems = []
    if (spec['enum'] != null && !(spec['enum'] as List).any { choice -> sameValue(choice, converted) }) {
        problems << "${describe(value)} is not one of ${(spec['enum'] as List).join(', ')}".toString()
    }
    if (converted instanceof CharSequence) {
        problems.addAll(stringProblems(converted.toString(), spec))
        if (spec.format) {
            problems.addAll(pathProblems(converted.toString(), spec))
        }
    }
    if (converted instanceof Number) {
        problems.addAll(rangeProblems(converted as Number, spec))
    }
    return problems
}

// [true, value as that type] when `value` is of (or, from text or the command line, converts to) `type`, else [false, null].
def convertToType(value, String type, boolean fromText) {
    // a parameter's text is passed on as it is: a blank around it (`"8\n"` in a params file) or a
    // `+` (`"+100"`) would pass here and break the task's command line or a retry's arithmetic
    def text = value instanceof CharSequence ? (fromText ? value.toString().trim() : value.toString()) : null
    def sign = fromText ? '[+-]?' : '-?'
    if (type == 'string') {
        // a number on the command line (`--google_project 123`) arrives as a number; a lone flag as true
        return value instanceof CharSequence || value instanceof Number ? [true, value.toString()] : [false, null]
    }
    if (type == 'integer') {
        // 500.0 is no integer here: the value is passed on as written, and the CLI wants `500`
        if (value instanceof Integer || value instanceof Long || value instanceof Short || value instanceof BigInteger) {
            return [true, value]
        }
        return text != null && text ==~ (sign + /\d+/) ? [true, new BigInteger(text.replaceFirst(/^\+/, ''))] : [false, null]
    }
    if (type == 'number') {
        if (value instanceof Number) {
            // YAML's .nan and .inf, and 1e400 (infinite as a double): no number a parameter takes
            def finite = !((value instanceof Double || value instanceof Float) && (value.isNaN() || value.isInfinite()))
            return finite ? [true, value] : [false, null]
        }
        return text != null && text ==~ (sign + /(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?/) ? [true, new BigDecimal(text)] : [false, null]
    }
    if (type == 'boolean') {
        if (value instanceof Boolean) {
            return [true, value]
        }
        // only a CSV/TSV cell converts: a quoted 'false' in a params file or config stays a string,
        // which Groovy reads as true, so it is refused rather than passed on
        return fromText && text != null && text.toLowerCase(Locale.ROOT) in ['true', 'false'] ? [true, text.toLowerCase(Locale.ROOT) == 'true'] : [false, null]
    }
    if (type == 'null') {
        return value == null || (fromText && text == '') ? [true, null] : [false, null]
    }
    if (type == 'array') {
        return value instanceof List ? [true, value] : [false, null]
    }
    if (type == 'object') {
        return value instanceof Map ? [true, value] : [false, null]
    }
    return [true, value] // a type this validator does not know is not held against the value
}

// Says what was expected and what came, with the usual cause of a lone flag.
def typeProblem(value, List types) {
    def expected = types.collect { type -> type ==~ /[aeiou].*/ ? "an ${type}" : "a ${type}" }.join(' or ')
    if (value == true && !('boolean' in types)) {
        return "expected ${expected}, but found true (what a lone --option with no value after it gives)".toString()
    }
    if ('boolean' in types && value instanceof CharSequence && value.toString().trim().toLowerCase(Locale.ROOT) in ['true', 'false']) {
        return "${describe(value)} is a quoted string, not a boolean: write ${value.toString().trim().toLowerCase(Locale.ROOT)} without quotes".toString()
    }
    if (value instanceof Date && 'string' in types) { // YAML reads 2024-01-01 as a date
        return "${describe(value)} is not ${expected}: the params file read it as a date; quote it".toString()
    }
    return "${describe(value)} is not ${expected}".toString()
}

// A value as the user wrote it: strings quoted, on one line.
def describe(value) {
    return value instanceof CharSequence ? "'${visible(value.toString())}'".toString() : value.toString()
}

// Equal as numbers when both are numbers (300 == 300.0), else as strings.
def sameValue(a, b) {
    if (a instanceof Number && b instanceof Number) {
        return toDecimal(a).compareTo(toDecimal(b)) == 0
    }
    return a?.toString() == b?.toString() && (a instanceof Boolean) == (b instanceof Boolean)
}

// Any number as a BigDecimal, through its text so that 0.7d stays 0.7.
def toDecimal(Number number) {
    return new BigDecimal(number.toString())
}

// pattern, minLength, maxLength
def stringProblems(String text, Map spec) {
    def problems = []
    if (spec.pattern && !java.util.regex.Pattern.compile(ecmaPattern(spec.pattern.toString())).matcher(text).find()) {
        problems << (spec.errorMessage ? "'${visible(text)}' ${spec.errorMessage}" : "'${visible(text)}' does not match the pattern ${spec.pattern}").toString()
    }
    if (spec.minLength != null && text.length() < (spec.minLength as int)) {
        problems << "'${visible(text)}' is shorter than ${spec.minLength} characters".toString()
    }
    if (spec.maxLength != null && text.length() > (spec.maxLength as int)) {
        problems << "'${visible(text)}' is longer than ${spec.maxLength} characters".toString()
    }
    return problems
}

// A JSON schema (ECMA-262) pattern for Java: its `$` ends the text, where Java's `$` also matches
// before a last line break, which let `s1\n` (a YAML `sample: |` block) pass `^[A-Za-z0-9]*$`.
// Escapes and character classes are kept as they are.
def ecmaPattern(String pattern) {
    return pattern.replaceAll(/\\[\s\S]|\[(?:\\[\s\S]|[^\]\\])*\]|[$]/) { match -> match == '$' ? '\\z' : match }
}

// minimum, maximum, exclusiveMinimum, exclusiveMaximum
def rangeProblems(Number number, Map spec) {
    def value = toDecimal(number)
    def problems = []
    if (spec.minimum != null && value < toDecimal(spec.minimum as Number)) {
        problems << "${number} is less than the minimum ${spec.minimum}".toString()
    }
    if (spec.maximum != null && value > toDecimal(spec.maximum as Number)) {
        problems << "${number} is greater than the maximum ${spec.maximum}".toString()
    }
    if (spec.exclusiveMinimum instanceof Number && value <= toDecimal(spec.exclusiveMinimum as Number)) {
        problems << "${number} must be greater than ${spec.exclusiveMinimum}".toString()
    }
    if (spec.exclusiveMaximum instanceof Number && value >= toDecimal(spec.exclusiveMaximum as Number)) {
        problems << "${number} must be less than ${spec.exclusiveMaximum}".toString()
    }
    return problems
}

// nf-schema's path formats: what must exist does, and what exists is of the right kind. A path that
// Nextflow's file() refuses (a blank or line break at either end, as a YAML `file: |` block leaves)
// is a problem of this value, not an error naming neither the sheet nor the row.
def pathProblems(String text, Map spec) {
    if (text != text.trim()) {
        def where = text.startsWith(text.trim()) ? 'ends' : 'starts'
        return ["'${visible(text)}' ${where} with a blank or line break: remove it".toString()]
    }
    def unnamable = unnamablePathProblem(text)
    if (unnamable) {
        return [unnamable]
    }
    try {
        return existingPathProblems(text, spec)
    }
    catch (Exception e) {
        return ["'${visible(text)}' is not a usable path: ${e.message}".toString()]
    }
}

// The path checks of pathProblems, for a path file() takes. A path that starts with `~` names a
// folder `~` in the launch directory: refused whether or not it is there, since Nextflow makes
// `<outdir>/pipeline_info` before validation runs, so a `~/results` is always there by then.
def existingPathProblems(String text, Map spec) {
    def mustExist = spec.exists == true
    if (spec.format == 'file-path-pattern') {
        return patternProblems(text, mustExist)
    }
    if (!(spec.format in ['file-path', 'directory-path', 'path'])) {
        return []
    }
    def path = file(text, glob: false)
    def tilde = text.startsWith('~')
    if (!path.exists()) {
        return mustExist || tilde ? ["'${text}'${mustExist ? ' does not exist' : ''}${launchDirNote(text)}".toString()] : []
    }
    if (tilde) {
        return [tildeProblem(text)]
    }
    if (spec.format == 'file-path' && path.isDirectory()) {
        return ["'${text}' is a directory, not a file".toString()]
    }
    if (spec.format == 'directory-path' && !path.isDirectory()) {
        return ["'${text}' is a file, not a directory".toString()]
    }
    if (spec.format == 'file-path' && mustExist && !java.nio.file.Files.isRegularFile(path)) {
        return notFileProblems(text, [path])  // a FIFO's task waited for a writer for ever; /dev/null read nothing
    }
    return []
}

// file-path-pattern: what the pattern names is there, and is files to read. A path that is there as
// written is taken as written, glob characters and all (a file `g[1].fa`, which the glob reads as
// g1.fa: the pipeline's own check then says what to do), and must be a file, not a folder. A glob's
// matches that are no files to read (unreadableMatches), which Nextflow's files() leaves out without
// a word, are problems too.
def patternProblems(String text, boolean mustExist) {
    def literal = file(text, glob: false)
    if (!text.startsWith('~') && literal.exists()) {
        return mustExist ? notFileProblems(text, [literal]) + emptyMatchProblems(text, [literal]) : []
    }
    def found = files(text).findAll { path -> path.exists() }
    def unreadable = mustExist ? unreadableMatches(text) : []
    if (mustExist && !found && !unreadable) {
        return ["no file matches '${text}'${launchDirNote(text)}".toString()]
    }
    if (text.startsWith('~')) {
        return [tildeProblem(text)]
    }
    return mustExist ? notFileProblems(text, unreadable) + emptyMatchProblems(text, found) : []
}

// Whether a path holds a character that makes Nextflow's files() read it as a glob.
def isGlobPattern(String text) {
    return ['*', '?', '[', '{'].any { character -> text.contains(character) }
}

// The entries a local glob matches that are no files to read: links to nothing, folders, pipes,
// sockets. Nextflow's files() leaves them out without a word (the sample was missing from a run
// that ended well), and without glob characters returns a folder as it is (PREPARE failed on it).
// As in a shell, a hidden name is matched only by a pattern part that starts with '.'. The folders
// are listed without following links to folders (no loops); one that cannot be listed is left to
// Nextflow's own listing; one this Java cannot name is left to the check of such paths
// (unnamablePath). Paths on object storage (s3://, gs://) have no such entries: not listed.
def unreadableMatches(String text) {
    def path = file(text, glob: false)
    if (path.toUri().getScheme() != 'file') {
        return []
    }
    def names = (0..<path.nameCount).collect { i -> path.getName(i).toString() }
    def first = names.findIndexOf { name -> isGlobPattern(name) }
    if (first < 0) {
        return java.nio.file.Files.isSymbolicLink(path) && !java.nio.file.Files.exists(path) ? [path] : []
    }
    def base = names.take(first).inject(path.root ?: path.fileSystem.getPath('')) { folder, name -> folder.resolve(name) }
    def parts = names.drop(first)
    if (!java.nio.file.Files.isDirectory(base)) {
        return []
    }
    def matcher = path.fileSystem.getPathMatcher('glob:' + parts.join('/'))
    def depth = parts.any { part -> part.contains('**') } ? Integer.MAX_VALUE : parts.size()
    def hiddenAsked = parts.any { part -> part.startsWith('.') }
    try {
        return java.nio.file.Files.find(base, depth, { entry, _attributes -> shownMatch(base.relativize(entry), matcher, hiddenAsked) } as java.util.function.BiPredicate)
            .withCloseable { stream -> stream.filter { entry -> !java.nio.file.Files.isRegularFile(entry) && !unnamablePath(entry.toString()) }.collect(java.util.stream.Collectors.toList()) }
            .sort()
    }
    catch (Exception _e) {
        return []
    }
}

// Whether a path relative to a glob's folder is one the glob matches, hidden names left out unless asked for.
def shownMatch(relative, matcher, boolean hiddenAsked) {
    def hidden = (0..<relative.nameCount).any { i -> relative.getName(i).toString().startsWith('.') }
    return relative.toString() && matcher.matches(relative) && (hiddenAsked || !hidden)
}

// One problem for each path of `paths` that a pattern named but that is no file to read (a folder,
// a link to nothing, a pipe, socket or device), saying what it is.
def notFileProblems(String text, List paths) {
    def literal = file(text, glob: false)
    return paths.findAll { path -> !java.nio.file.Files.isRegularFile(path) }.collect { path ->
        def what = path == literal ? "'${text}'" : "'${path}' (matched by '${text}')"
        "${what} is ${entryKind(path)}: ${notFileFix(text, path, path == literal)}".toString()
    }
}

// What a path that is no file to read is, in words.
def entryKind(path) {
    if (java.nio.file.Files.isSymbolicLink(path) && !java.nio.file.Files.exists(path)) {
        return "a link to ${java.nio.file.Files.readSymbolicLink(path)}, which does not exist"
    }
    return java.nio.file.Files.isDirectory(path) ? 'a directory, not a file' : 'neither a file nor a directory (a pipe, socket or device)'
}

// The way out for notFileProblems: the files of a folder given as a glob; a match moved away or the
// pattern narrowed; a link mended.
def notFileFix(String text, path, boolean literal) {
    if (literal && java.nio.file.Files.isDirectory(path)) {
        return "give its files as a quoted glob, such as '${text.replaceFirst('/+$', '')}/*.fa'"
    }
    return java.nio.file.Files.isSymbolicLink(path) ? 'mend or remove the link' + (literal ? '' : ', or narrow the pattern') : 'move it away' + (literal ? '' : ' or narrow the pattern')
}

// A path that starts with `~`, which Nextflow does not expand, as one problem (launchDirNote says why).
def tildeProblem(String text) {
    return "'${text}'${launchDirNote(text)}".toString()
}

// Text with its line breaks and tabs written as \n, \r and \t, to quote it on one line.
def visible(String text) {
    return text.replace('\n', '\\n').replace('\r', '\\r').replace('\t', '\\t')
}

// For a relative path, where it was looked for: nf-schema and Nextflow's file() resolve it against the
// launch directory, not the samplesheet's folder (docs/usage.md); for `~...`, that it is not expanded
// (a shell expands it, Nextflow does not); else ''.
def launchDirNote(String text) {
    if (text.startsWith('~')) {
        return ": '~' is not expanded (it names a folder '~' in the launch directory, ${workflow.launchDir}): give the full path".toString()
    }
    if (text.startsWith('/') || text ==~ /^[A-Za-z][A-Za-z0-9+.-]*:\/\/.*/) {
        return ''
    }
    return ": relative paths are resolved against the launch directory, ${workflow.launchDir}".toString()
}

// The files a pattern that must exist matched that are empty, one problem each: an empty input file
// stopped PREPARE, and with it every sample's run, minutes later. `found` are the matches.
def emptyMatchProblems(String text, List found) {
    def literal = file(text, glob: false)
    return found.collect { path ->
        def matched = path != literal
        def problem = emptyFileProblem(path, matched ? "'${path}' (matched by '${text}')" : "'${path}'")
        problem && matched ? "${problem}; move it away or narrow the pattern".toString() : problem
    }.findAll { problem -> problem }
}

// "<what> is empty ..." for a local regular file of 0 bytes, else null. Only the size is looked at,
// never the content (an empty gzip stream is 20 bytes, and is PREPARE's to judge); files on object
// storage are not asked, to keep a glob over many of them from costing a request each.
def emptyFileProblem(path, String what) {
    if (path.toUri().getScheme() != 'file' || !java.nio.file.Files.isRegularFile(path) || java.nio.file.Files.size(path) != 0) {
        return null
    }
    return "${what} is empty (0 bytes): an empty file holds no sequences".toString()
}

// ================================================================================================
// Text and file names, whatever the locale
// ================================================================================================

// The text of a file, read as UTF-8 whatever the locale: under LANG=C (or none: batch jobs, cron,
// minimal containers) Java 17 reads ASCII only, and stopped at the first other byte ("Input length
// = 1"), a BOM or an accent in a column the pipeline ignores included. Text that is not UTF-8 stops
// the run naming the file, the line and the fix.
def utf8Text(path, String what) {
    // through an input stream, which every file system of Nextflow's has (s3:// and gs:// included)
    def bytes = java.nio.ByteBuffer.wrap(java.nio.file.Files.newInputStream(path).withCloseable { stream -> stream.readAllBytes() })
    try {
        return java.nio.charset.StandardCharsets.UTF_8.newDecoder().decode(bytes).toString()
    }
    catch (java.nio.charset.CharacterCodingException _e) {
        def line = (0..<bytes.position()).count { i -> bytes.get(i) == 10 } + 1
        error("${what} is not UTF-8 text (line ${line}): save it as UTF-8 (in Excel: CSV UTF-8)")
    }
}

// Whether this Java cannot use `text` as a path: it encodes file names in the charset of the locale
// it started in (sun.jnu.encoding), ASCII under LANG=C or none. A path with any other character is
// then refused ("Malformed input or input contains unmappable characters"), or, listed from a folder
// (a glob's matches), named with U+FFFD in its place, which a task is then given: another path. Under
// a UTF-8 locale a name of bytes that are no UTF-8 (Latin-1) is listed with U+FFFD just the same.
def unnamablePath(String text) {
    def encoding = System.getProperty('sun.jnu.encoding')
    def utf8 = encoding == null || (java.nio.charset.Charset.isSupported(encoding) && java.nio.charset.Charset.forName(encoding) == java.nio.charset.StandardCharsets.UTF_8)
    return text.contains('\uFFFD') || (!utf8 && text.find(/[^\x00-\x7F]/) != null)
}

// "'<path>' holds ...; <fix>" for a path this Java cannot use (unnamablePath), else null.
def unnamablePathProblem(String text) {
    return unnamablePath(text) ? "'${visible(text)}' holds ${unnamablePathCause(text)}; ${unnamablePathFix(text)}".toString() : null
}

// Why an unnamablePath cannot be used: the charset the locale gave Java, or bytes that are no UTF-8.
def unnamablePathCause(String text = '') {
    if (text.contains('\uFFFD') && System.getProperty('sun.jnu.encoding')?.toUpperCase(Locale.ROOT)?.replace('-', '') == 'UTF8') {
        return "a name of bytes that are not UTF-8 (written in Latin-1 or another legacy encoding), which this Java lists with U+FFFD in their place: a task would be given another path"
    }
    return "characters other than ASCII, which this Java cannot use in file names: it encodes them as ${System.getProperty('sun.jnu.encoding')} (the encoding of its locale), not UTF-8".toString()
}

// The way out for an unnamablePath.
def unnamablePathFix(String text = '') {
    if (text.contains('\uFFFD') && System.getProperty('sun.jnu.encoding')?.toUpperCase(Locale.ROOT)?.replace('-', '') == 'UTF8') {
        return 'rename it in UTF-8 (e.g. `convmv -f latin1 -t utf8 --notest PATH`), or give a link to it whose path is ASCII'
    }
    return 'run under a UTF-8 locale (e.g. `export LC_ALL=C.UTF-8`), or give a path without them, or a link to it whose path has none'
}

// ================================================================================================
// Samplesheets
// ================================================================================================

// The rows of a CSV/TSV/YAML/JSON samplesheet as [meta, value, ...] lists: the `meta` columns form
// meta, the others follow in schema order (path formats as file objects, relative to the launch
// directory). Stops the run listing every bad cell, by 1-based data row (the header is not a row).
def samplesheetToList(String sheetPath, String schemaPath) {
    def schema = loadJsonSchema(schemaPath)
    def items = (schema.items ?: [:]) as Map
    def columns = (items.properties ?: [:]) as Map
    def sheet = readSamplesheet(sheetPath)
    def rows = sheet[0] as List
    def problems = sheetShapeProblems(sheet, schema)
    rows.eachWithIndex { row, index ->
        problems.addAll(rowProblems(row as Map, index + 1, items, sheet[1] as boolean))
    }
    if (problems) {
        error("Invalid samplesheet ${sheetPath} (${problems.size()} problem${problems.size() == 1 ? '' : 's'}):\n" + problems.join('\n'))
    }
    def unknown = rows.collectMany { row -> (row as Map).keySet() as List }.unique().findAll { column -> !(column in columns.keySet()) }
    if (unknown) {
        log.warn("Samplesheet ${sheetPath}: ignoring column${unknown.size() == 1 ? '' : 's'} ${unknown.join(', ')} (not in ${schemaPath})")
    }
    return rows.collect { row -> sheetEntry(row as Map, columns, sheet[1] as boolean) }
}

// Problems of the sheet as a whole: too few or too many rows, required columns absent from the header.
def sheetShapeProblems(List sheet, Map schema) {
    def rows = sheet[0] as List
    def header = sheet[2] as List
    def problems = []
    def minItems = (schema.minItems ?: 0) as int
    if (rows.size() < minItems) {
        problems << "* the samplesheet has ${rows.size()} row${rows.size() == 1 ? '' : 's'}, at least ${minItems} needed".toString()
    }
    if (schema.maxItems != null && rows.size() > (schema.maxItems as int)) {
        problems << "* the samplesheet has ${rows.size()} rows, at most ${schema.maxItems} allowed".toString()
    }
    if (header != null) {
        def required = ((schema.items as Map)?.required ?: []) as List
        required.findAll { column -> !(column in header) }.each { column ->
            problems << "* column ${column}: required, but not in the header (${header.join(', ')})".toString()
        }
        def columns = (((schema.items as Map)?.properties ?: [:]) as Map).keySet()
        repeatedColumnProblems(header, columns).each { problem -> problems << "* ${problem}".toString() }
        (sheet[3] as List).each { problem -> problems << "* ${problem}".toString() }
    }
    return problems
}

// The problems of one row: each column against its schema, with the column's errorMessage when it has one.
def rowProblems(Map row, int number, Map items, boolean fromText) {
    def columns = (items.properties ?: [:]) as Map
    def required = (items.required ?: []) as List
    def problems = []
    columns.each { column, spec ->
        def message = cellMessage(row, column.toString(), spec as Map, column in required, fromText)
        if (message) {
            problems << "* row ${number}, column ${column}: ${message}".toString()
        }
    }
    return problems
}

// What is wrong with one cell (with the column's errorMessage when it has one), or null.
def cellMessage(Map row, String column, Map spec, boolean required, boolean fromText) {
    def value = row[column]
    def found = []
    if (isMissing(value)) {
        // an absent CSV/TSV column is reported once, from the header (sheetShapeProblems)
        found = required && (fromText ? row.containsKey(column) : true) ? ['required, but empty'] : []
    }
    else {
        // the column's rules do not apply to a misread value, nor to a path this Java cannot use
        // (the file may well exist): their own message says all
        def misread = fromText ? null : misreadCellProblem(value, column, spec)
        def own = misread ?: (spec.format ? unnamablePathProblem(value.toString()) : null)
        if (own) {
            return own
        }
        // the column's errorMessage leads the message: not repeated for each rule found broken
        found = cellProblems(value, spec.findAll { entry -> entry.key != 'errorMessage' }, fromText)
    }
    if (!found) {
        return null
    }
    return spec.errorMessage ? "${spec.errorMessage} (${found.join('; ')})".toString() : found.join('; ')
}

// The problems of one samplesheet cell with a value: those of checkValue, then an empty file.
def cellProblems(value, Map spec, boolean fromText) {
    def problems = checkValue(value, spec, fromText)
    if (!problems && spec.format == 'file-path' && spec.exists == true) {
        def empty = emptyFileProblem(file(value.toString(), glob: false), "'${value}'")
        return empty ? ["${empty}; remove the row".toString()] : []
    }
    return problems
}

// YAML 1.1 reads an unquoted `010` as 8, `1.10` as 1.1, `yes` as true and `2024-01-01` as a date, and
// JSON `10` is a number: kept as text (convertToType's string branch takes numbers, for the command
// line), a sample would be renamed, or merged with another. So a column of text refuses them here.
// What was written is gone (`12:30` reads as 750), so the hint shows where the quotes go, not a value.
def misreadCellProblem(value, String column, Map spec) {
    def types = spec.type == null ? [] : (spec.type instanceof List ? spec.type : [spec.type]).collect { type -> type.toString() }
    if (!('string' in types) || types.any { type -> type != 'string' && convertToType(value, type, false)[0] }) {
        return null
    }
    def kind = value instanceof Number ? 'the number' : (value instanceof Boolean ? 'the boolean' : null)
    kind = value instanceof java.util.Date ? 'the date' : kind
    if (kind == null) {
        return null
    }
    def read = value instanceof java.util.Date ? isoDate(value as java.util.Date) : value.toString()
    return "read as ${kind} ${read}, not as text: quote it as you wrote it (${column}: \"...\") so that it is kept as written".toString()
}

// A date as yyyy-MM-dd in UTC, the zone YAML reads a plain date in (not the JVM's, which may shift the day).
def isoDate(java.util.Date date) {
    return date.toInstant().atZone(java.time.ZoneOffset.UTC).toLocalDate().toString()
}

// One validated row as [meta, value, ...].
def sheetEntry(Map row, Map columns, boolean fromText) {
    def meta = [:]
    def values = []
    columns.each { column, spec ->
        def value = row[column]
        def converted = isMissing(value) ? null : typedValue(value, spec as Map, fromText)
        if ((spec as Map).meta) {
            ((spec as Map).meta as List).each { key -> meta[key] = converted }
        }
        else {
            values << (converted == null ? [] : converted)
        }
    }
    return [meta] + values
}

// A valid cell as the value the pipeline uses: its schema type, and file objects for path formats.
def typedValue(value, Map spec, boolean fromText) {
    def types = spec.type == null ? [] : (spec.type instanceof List ? spec.type : [spec.type]).collect { type -> type.toString() }
    def converted = types ? types.collect { type -> convertToType(value, type, fromText) }.find { result -> result[0] }[1] : value
    if (spec.format == 'file-path-pattern') {
        return files(converted.toString())
    }
    if (spec.format in ['file-path', 'directory-path', 'path']) {
        return file(converted.toString(), glob: false)
    }
    return converted
}

// [rows as Maps, fromText, header (CSV/TSV) or null, shape problems] of a sheet chosen by its extension.
def readSamplesheet(String sheetPath) {
    if (sheetPath.startsWith('~')) {
        // even when a folder `~` in the launch directory holds it: not the sheet in the home folder
        error("Samplesheet ${sheetPath}${launchDirNote(sheetPath)}")
    }
    def path = file(sheetPath, glob: false)
    if (!path.exists() && isGlobPattern(sheetPath)) {
        error("Samplesheet ${sheetPath} is a glob pattern: a samplesheet is one file; give its path (for several sheets, join their rows into one)")
    }
    if (!path.isFile()) {
        error("Samplesheet ${sheetPath} not found")
    }
    def name = path.name.toLowerCase(Locale.ROOT)
    def text = utf8Text(path, "Samplesheet ${sheetPath}").replaceFirst(/^\uFEFF/, '')
    if (name ==~ /.*\.(csv|tsv)$/) {
        return rowsFromDelimited(text, name.endsWith('.tsv') ? '\t' : ',', sheetPath)
    }
    def data = null
    try {
        data = name ==~ /.*\.ya?ml$/ ? strictYaml(text) : (name.endsWith('.json') ? strictJson(text) : null)
    }
    catch (Exception e) {
        error("Samplesheet ${sheetPath} cannot be read: ${e.message}")
    }
    if (!(name ==~ /.*\.(ya?ml|json)$/)) {
        error("Samplesheet ${sheetPath}: unknown format (expected .csv, .tsv, .yml, .yaml or .json)")
    }
    if (data == null) {
        data = []
    }
    if (!(data instanceof List) || !(data as List).every { row -> row instanceof Map }) {
        error("Samplesheet ${sheetPath}: expected a list of rows (one mapping of column: value per row)")
    }
    def rows = (data as List).collect { row -> (row as Map).collectEntries { key, value -> [key.toString(), value] } }
    return [rows, false, null, []]
}

// YAML text, a key repeated in one mapping refused: SnakeYAML keeps the last by default, so a second
// `file:` in a row dropped the first file unseen (as a repeated CSV column would: see rowsFromDelimited).
def strictYaml(String text) {
    def options = new org.yaml.snakeyaml.LoaderOptions()
    options.setAllowDuplicateKeys(false)
    return new org.yaml.snakeyaml.Yaml(options).load(text)
}

// JSON text, a key repeated in one object refused: JsonSlurper keeps the last. The repeat is found by
// reading the text as YAML too (JSON is YAML's flow style); text that YAML 1.1 reads otherwise is
// left to JsonSlurper alone.
def strictJson(String text) {
    try {
        strictYaml(text)
    }
    catch (org.yaml.snakeyaml.constructor.DuplicateKeyException e) {
        throw e
    }
    catch (Exception _e) {
        // not YAML 1.1 (a tab where YAML refuses one, ...): no repeat to find this way
    }
    return new groovy.json.JsonSlurper().parseText(text)
}

// CSV/TSV text with a header line -> [rows as Maps, true, header, problems with the number of fields].
def rowsFromDelimited(String text, String separator, String sheetPath) {
    def lines = parseDelimited(text, separator, sheetPath)
    if (!lines) {
        return [[], true, null, []]
    }
    def header = lines.first().collect { column -> column.toString() }
    def problems = []
    def rows = []
    lines.drop(1).eachWithIndex { fields, index ->
        if (fields.size() > header.size()) {
            problems << "row ${index + 1}: ${fields.size()} fields, but the header has ${header.size()} columns".toString()
        }
        def row = [:]
        header.eachWithIndex { column, position -> row[column] = position < fields.size() ? fields[position] : null }
        rows << row
    }
    return [rows, true, header, problems]
}

// One problem per column of the schema (`columns`) that the header names more than once: a row keeps
// one cell per name, so the others (a second file) would be dropped unseen. Columns the schema does
// not know are ignored anyway (with a warning), repeated or not.
def repeatedColumnProblems(List header, Collection columns) {
    def counts = header.findAll { column -> column in columns }.countBy { column -> column }
    return counts.findAll { _column, n -> n > 1 }.collect { column, n ->
        "column ${column}: named ${n} times in the header (${header.join(', ')}); give each column once (a sample with several files has one row per file)".toString()
    }
}

// Splits CSV/TSV text into records of fields. A field in double quotes may hold the separator,
// line breaks and doubled quotes (""); unquoted fields are trimmed; blank lines, and lines of empty
// unquoted fields only (a spreadsheet's trailing ",,"), are skipped. A CR outside quotes not followed
// by LF (old Mac OS line ends, all or some) would join two lines, and text after a closing quote
// ("s01"x) would be joined to the field unseen: both refused.
def parseDelimited(String text, String separator, String sheetPath) {
    def records = []
    def fields = []
    def field = new StringBuilder()
    // quoted: inside quotes; quoteSeen: a quote inside quotes, closing or doubled; fieldQuoted and
    // recordQuoted: the field / record had quotes (kept as written; not a blank line)
    // cr: the last character outside quotes was a CR
    def state = [quoted: false, quoteSeen: false, fieldQuoted: false, recordQuoted: false, cr: false]
    def endField = {
        fields << (state.fieldQuoted ? field.toString() : field.toString().trim())
        field.setLength(0)
        state.fieldQuoted = false
    }
    def endRecord = {
        endField.call()
        if (state.recordQuoted || fields.any { value -> value != '' }) {
            records << fields
        }
        fields = []
        state.recordQuoted = false
    }
    text.toList().each { ch ->
        if (state.quoted && !state.quoteSeen) {
            if (ch == '"') {
                state.quoteSeen = true
            }
            else {
                field.append(ch)
            }
            return
        }
        if (state.quoted && ch == '"') {
            field.append('"') // a doubled quote inside quotes
            state.quoteSeen = false
            return
        }
        state.quoted = false // a closing quote was seen; this character is outside the quotes
        state.quoteSeen = false
        if (state.cr && ch != '\n') {
            loneCrError(sheetPath)
        }
        state.cr = ch == '\r'
        if (ch == '"' && !state.fieldQuoted && field.toString().trim().isEmpty()) {
            field.setLength(0)
            state.quoted = true
            state.fieldQuoted = true
            state.recordQuoted = true
        }
        else if (ch == separator) {
            endField.call()
        }
        else if (ch == '\n') {
            endRecord.call()
        }
        else if (state.fieldQuoted && !ch.trim().isEmpty()) {
            textAfterQuoteError(sheetPath, records.size(), "\"${field}\"${ch}")
        }
        else if (ch != '\r' && !state.fieldQuoted) {
            field.append(ch)
        }
    }
    if (state.quoted && !state.quoteSeen) {
        error("Samplesheet ${sheetPath}: a quoted field is not closed")
    }
    if (state.cr) {
        loneCrError(sheetPath)
    }
    if (field.length() > 0 || fields || state.recordQuoted) {
        endRecord.call()
    }
    return records
}

// Stops the run: text follows a field's closing quote in row `row` (0: the header).
def textAfterQuoteError(String sheetPath, int row, String seen) {
    def where = row == 0 ? 'its header' : "row ${row}"
    error("Samplesheet ${sheetPath}: in ${where}, text follows a closing quote (${seen}...), which would be joined to the field unseen; put the whole field inside the quotes, or remove them")
}

// Stops the run: the sheet has a line end that is a CR alone.
def loneCrError(String sheetPath) {
    error("Samplesheet ${sheetPath}: some or all of its line ends are a CR alone (as old Mac OS wrote them), which joins lines; save it with LF or CRLF line ends")
}

// ================================================================================================
// Start-up summary
// ================================================================================================

// Core run information, then the parameters that differ from the schema defaults, by schema group.
def paramsSummaryLog(Map parameters, String schemaPath, workflow) {
    def schema = loadJsonSchema(schemaPath)
    def core = [
        runName        : workflow.runName,
        launchDir      : workflow.launchDir,
        workDir        : workflow.workDir,
        projectDir     : workflow.projectDir,
        profile        : workflow.profile,
        containerEngine: workflow.containerEngine ?: 'none',
        revision       : workflow.revision,
        userName       : workflow.userName,
        configFiles    : workflow.configFiles?.join(', '),
    ].findAll { _key, value -> !isMissing(value) }
    def sections = [summarySection('Core Nextflow options', core)]
    schemaGroups(schema).each { group ->
        def changed = (group[3] as Map).findAll { name, spec -> !isDefault(parameters[name], spec as Map) }
            .collectEntries { name, _spec -> [name, parameters[name]] }
        if (changed) {
            sections << summarySection(group[1].toString(), changed)
        }
    }
    sections << 'Only the parameters that differ from the pipeline defaults are shown.'
    return sections.join('\n\n')
}

// A titled block of `name : value` lines, the names padded to one width.
def summarySection(String title, Map values) {
    def width = values.keySet().collect { key -> key.toString().length() }.max() ?: 0
    return ([title] + values.collect { key, value -> "  ${key.toString().padRight(width)} : ${value}".toString() }).join('\n')
}

// A value equals its schema default; an unset boolean (value or default) counts as false.
def isDefault(value, Map spec) {
    def isBoolean = spec.type == 'boolean' || (spec.type instanceof List && 'boolean' in spec.type)
    def fallback = spec['default'] == null && isBoolean ? false : spec['default']
    def current = value == null && isBoolean ? false : value
    if (isMissing(current) || isMissing(fallback)) {
        return isMissing(current) && isMissing(fallback)
    }
    return sameValue(current, fallback)
}

// ================================================================================================
// --help
// ================================================================================================

// The help text: `--help` lists the groups and their parameters, `--help <param>` shows one parameter
// in full, `--help_full` shows every parameter in full; hidden ones only with `--show_hidden`.
def paramsHelp(String schemaPath, Map parameters, String command) {
    def schema = loadJsonSchema(schemaPath)
    def properties = schemaProperties(schema)
    def required = schemaRequired(schema)
    def asked = parameters.help instanceof CharSequence ? parameters.help.toString().replaceFirst(/^-+/, '') : null
    if (asked && !(asked in properties.keySet())) {
        // `--help shard-size` or `--help shardSize` still finds shard_size
        asked = properties.keySet().find { name -> plainName(name.toString()) == plainName(asked) } ?: asked
    }
    if (asked) {
        if (!(asked in properties.keySet())) {
            def closest = closestName(asked, properties.keySet())
            // an error, not help text: a script's `--help typo` must not end with exit 0
            error("--help ${asked}: no such parameter${closest ? " (did you mean --${closest}?)" : ''}; --help lists them all")
        }
        return parameterHelp(asked, properties[asked] as Map, asked in required)
    }
    def full = parameters.help_full == true
    def showHidden = parameters.show_hidden == true
    def lines = []
    if (schema.title) {
        lines << schema.title.toString()
    }
    if (schema.description) {
        lines.addAll(wrapText(schema.description.toString(), 100, ''))
    }
    lines << ''
    lines << "Usage: ${command}".toString()
    def groups = schemaGroups(schema).collect { group ->
        [group, (group[3] as Map).findAll { _name, spec -> showHidden || !(spec as Map).hidden }]
    }.findAll { entry -> entry[1] }
    def shownNames = groups.collectMany { entry -> (entry[1] as Map).keySet() as List }
    def widths = [
        shownNames.collect { name -> name.toString().length() + 2 }.max(),
        shownNames.collect { name -> parameterFlags(name.toString(), properties[name] as Map, required).length() }.max(),
    ]
    groups.each { entry -> lines.addAll(groupHelp(entry[0] as List, entry[1] as Map, required, full, widths)) }
    lines << ''
    lines << 'Show one parameter in full with --help <parameter>, every parameter with --help_full, hidden parameters with --show_hidden.'
    lines << 'Nextflow options take one dash: -profile, -resume, -work-dir, -c <config>.'
    return lines.join('\n')
}

// One group: its title and description, then a line per parameter (or a full block each with --help_full);
// `widths` are those of the name and flags columns, shared by all groups.
def groupHelp(List group, Map shown, List required, boolean full, List widths) {
    def lines = ['', group[1].toString()]
    if (group[2]) {
        lines.addAll(wrapText(group[2].toString(), 100, '  '))
    }
    shown.each { name, spec ->
        if (full) {
            lines << ''
            lines << parameterHelp(name.toString(), spec as Map, name in required).readLines().collect { line -> "  ${line}".toString() }.join('\n')
        }
        else {
            def lead = "  ${"--${name}".padRight(widths[0] as int)}  ${parameterFlags(name.toString(), spec as Map, required).padRight(widths[1] as int)}  "
            def described = wrapText(((spec as Map).description ?: '').toString(), 100, ' ' * lead.length())
            lines << lead + (described ? described.first().substring(lead.length()) : '')
            lines.addAll(described.drop(1))
        }
    }
    return lines
}

// `[integer, required]`: the type and the flags of one parameter in the help overview.
def parameterFlags(String name, Map spec, List required) {
    def flags = [typeName(spec)] + (name in required ? ['required'] : []) + (spec.hidden ? ['hidden'] : [])
    return "[${flags.join(', ')}]".toString()
}

// Everything the schema says about one parameter.
def parameterHelp(String name, Map spec, boolean required) {
    def lines = ["--${name}".toString()]
    def facts = [['type', typeName(spec)]]
    if (required) {
        facts << ['required', 'yes']
    }
    if (spec.containsKey('default')) {
        facts << ['default', spec['default']]
    }
    if (spec['enum'] != null) {
        facts << ['choices', (spec['enum'] as List).join(', ')]
    }
    if (spec.format) {
        facts << ['format', "${spec.format}${spec.exists == true ? ' (must exist)' : ''}"]
    }
    ['pattern', 'minimum', 'maximum', 'exclusiveMinimum', 'exclusiveMaximum', 'minLength', 'maxLength'].each { key ->
        if (spec[key] != null) {
            facts << [key, spec[key]]
        }
    }
    if (spec.hidden) {
        facts << ['hidden', 'yes']
    }
    if (spec.description) {
        lines.addAll(wrapText(spec.description.toString(), 100, '    '))
    }
    if (spec.help_text) {
        lines.addAll(wrapText(spec.help_text.toString(), 100, '    '))
    }
    facts.each { fact -> lines << "    ${fact[0].toString().padRight(9)}: ${fact[1]}".toString() }
    return lines.join('\n')
}

// `string`, or `boolean|string` for a list of types.
def typeName(Map spec) {
    return spec.type instanceof List ? (spec.type as List).join('|') : (spec.type ?: 'any').toString()
}

// Words of `text` in lines of at most `width` characters, each starting with `indent`.
def wrapText(String text, int width, String indent) {
    def lines = []
    def current = new StringBuilder()
    text.split(/\s+/).findAll { word -> word }.each { word ->
        if (current.length() > 0 && indent.length() + current.length() + 1 + word.length() > width) {
            lines << indent + current.toString()
            current.setLength(0)
        }
        current.append(current.length() > 0 ? ' ' : '').append(word)
    }
    if (current.length() > 0) {
        lines << indent + current.toString()
    }
    return lines
}
