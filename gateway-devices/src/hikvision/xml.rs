//! A small element tree over quick-xml, matching on **local names** only: ISAPI devices put the
//! same elements in different namespaces (`isapi.org`, `hikvision.com`, `std-cgi.com`,
//! `urn:psialliance-org`) or none, with or without an XML prolog.

use quick_xml::Reader;
use quick_xml::events::{BytesStart, Event};

use crate::Error;

/// Deepest nesting accepted.
const MAX_DEPTH: usize = 32;
/// Most elements accepted in one document.
const MAX_ELEMENTS: usize = 10_000;

/// One element: local name, attributes by local name, text and children.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Element {
    /// Local name (namespace prefix removed).
    pub name: String,
    /// Attributes, local names, values unescaped. `xmlns` declarations are left out.
    pub attributes: Vec<(String, String)>,
    /// Text directly inside the element, entities resolved, not trimmed.
    pub text: String,
    /// Child elements in order.
    pub children: Vec<Element>,
}

impl Element {
    /// The first child with this local name.
    pub fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    /// The trimmed text of the first child with this local name; `None` when the child is
    /// missing or empty.
    pub fn child_text(&self, name: &str) -> Option<&str> {
        self.child(name)
            .map(|c| c.text.trim())
            .filter(|t| !t.is_empty())
    }

    /// An attribute's value by local name.
    pub fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Parse a document and return its root element. Namespaces are ignored; a missing prolog is
/// fine; malformed XML, a second root, or a document nested deeper than 32 levels is an
/// [`Error::Protocol`].
pub fn parse(text: &str) -> Result<Element, Error> {
    let mut reader = Reader::from_str(text);
    reader.config_mut().check_end_names = true;
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    let mut count = 0usize;
    loop {
        let event = reader
            .read_event()
            .map_err(|e| Error::protocol(format!("malformed XML: {e}")))?;
        match event {
            Event::Start(start) => {
                count += 1;
                if stack.len() >= MAX_DEPTH || count > MAX_ELEMENTS {
                    return Err(Error::protocol("XML document too deep or too large"));
                }
                if root.is_some() && stack.is_empty() {
                    return Err(Error::protocol("XML document has more than one root"));
                }
                stack.push(element(&start)?);
            }
            Event::Empty(start) => {
                count += 1;
                if count > MAX_ELEMENTS {
                    return Err(Error::protocol("XML document too large"));
                }
                let element = element(&start)?;
                close(&mut stack, &mut root, element)?;
            }
            Event::End(_) => {
                let element = stack
                    .pop()
                    .ok_or_else(|| Error::protocol("malformed XML: unexpected end tag"))?;
                close(&mut stack, &mut root, element)?;
            }
            Event::Text(text) => {
                let decoded = text
                    .xml_content()
                    .map_err(|e| Error::protocol(format!("XML text: {e}")))?;
                push_text(&mut stack, &decoded)?;
            }
            Event::CData(data) => {
                let decoded = data
                    .decode()
                    .map_err(|e| Error::protocol(format!("XML CDATA: {e}")))?;
                push_text(&mut stack, &decoded)?;
            }
            Event::GeneralRef(reference) => {
                let resolved = match reference.resolve_char_ref() {
                    Ok(Some(c)) => c.to_string(),
                    Ok(None) => {
                        let name = reference
                            .decode()
                            .map_err(|e| Error::protocol(format!("XML reference: {e}")))?;
                        match quick_xml::escape::resolve_predefined_entity(&name) {
                            Some(value) => value.to_string(),
                            None => format!("&{name};"),
                        }
                    }
                    Err(e) => return Err(Error::protocol(format!("XML reference: {e}"))),
                };
                push_text(&mut stack, &resolved)?;
            }
            Event::Eof => break,
            Event::Comment(_) | Event::Decl(_) | Event::PI(_) | Event::DocType(_) => {}
        }
    }
    if !stack.is_empty() {
        return Err(Error::protocol("malformed XML: unclosed element"));
    }
    root.ok_or_else(|| Error::protocol("the answer holds no XML element"))
}

fn element(start: &BytesStart<'_>) -> Result<Element, Error> {
    let name = String::from_utf8_lossy(start.local_name().as_ref()).into_owned();
    let mut attributes = Vec::new();
    for attribute in start.attributes() {
        let attribute =
            attribute.map_err(|e| Error::protocol(format!("malformed XML attribute: {e}")))?;
        let key = attribute.key;
        if key.as_ref() == b"xmlns" || key.as_ref().starts_with(b"xmlns:") {
            continue;
        }
        let value = attribute
            .unescape_value()
            .map_err(|e| Error::protocol(format!("XML attribute value: {e}")))?;
        attributes.push((
            String::from_utf8_lossy(key.local_name().as_ref()).into_owned(),
            value.into_owned(),
        ));
    }
    Ok(Element {
        name,
        attributes,
        text: String::new(),
        children: Vec::new(),
    })
}

fn close(stack: &mut [Element], root: &mut Option<Element>, element: Element) -> Result<(), Error> {
    match stack.last_mut() {
        Some(parent) => parent.children.push(element),
        None if root.is_none() => *root = Some(element),
        None => return Err(Error::protocol("XML document has more than one root")),
    }
    Ok(())
}

fn push_text(stack: &mut [Element], text: &str) -> Result<(), Error> {
    match stack.last_mut() {
        Some(element) => element.text.push_str(text),
        None if text.trim().is_empty() => {}
        None => return Err(Error::protocol("text outside the XML root element")),
    }
    Ok(())
}

/// Escape text for an XML element body.
pub fn escape(text: &str) -> String {
    quick_xml::escape::escape(text).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_names_without_namespaces() {
        let doc = parse(
            r#"<?xml version="1.0"?><a:Root xmlns:a="urn:x" version="2.0"><a:b>t &amp; &#65;</a:b><c/><![CDATA[x]]></a:Root>"#,
        )
        .unwrap();
        assert_eq!(doc.name, "Root");
        assert_eq!(doc.attribute("version"), Some("2.0"));
        assert_eq!(doc.attributes.len(), 1);
        assert_eq!(doc.child_text("b"), Some("t & A"));
        assert!(doc.child("c").is_some());
        assert_eq!(doc.child_text("c"), None);
        assert_eq!(doc.text, "x");
    }

    #[test]
    fn refuses_malformed_documents() {
        for bad in [
            "",
            "   ",
            "<a>",
            "<a></b>",
            "</a>",
            "<a/><b/>",
            "text<a/>",
            "<a x='1' x='2'/>",
            "<a x=1/>",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        let deep = "<a>".repeat(40) + &"</a>".repeat(40);
        assert!(parse(&deep).is_err());
    }
}
