/* text_encoder/html_entities — internal to text_encoder/normalize: the HTML
 * entity data ftfy's unescape_html step uses (generated table, see
 * gen_html_entities.py). */
#ifndef SDMOE_TEXT_ENCODER_HTML_ENTITIES_H
#define SDMOE_TEXT_ENCODER_HTML_ENTITIES_H

#include <stddef.h>
#include <stdint.h>

/* UTF-8 replacement of the named entity name[0..len) (including '&' and ';',
 * case-sensitive, e.g. "&amp;"), or NULL when ftfy would leave it alone. */
const char *sd_html_entity_lookup(const char *name, size_t len);

/* Python html.unescape of the numeric reference &#num; : returns 1 and sets
 * *cp, or 0 when the reference decodes to nothing. */
int sd_html_charref(uint64_t num, uint32_t *cp);

#endif
