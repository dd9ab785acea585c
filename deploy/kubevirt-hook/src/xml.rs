//! A small XML tree over `quick-xml`: parse a document, find and change elements, write it
//! back. Everything that is not an element (text, comments, the declaration, CDATA...) is kept
//! as the event it was read as, so a document that is not changed is written back with the
//! same content.

use quick_xml::events::{BytesEnd, BytesStart, Event};
use quick_xml::{Reader, Writer, XmlVersion};

/// Errors reading or writing XML.
#[derive(Debug, thiserror::Error)]
pub enum XmlError {
    /// The text is not well-formed XML.
    #[error("the domain XML is not well-formed (at byte {position})")]
    Syntax {
        /// Byte offset where reading stopped.
        position: u64,
        /// Cause.
        #[source]
        source: quick_xml::Error,
    },
    /// An attribute could not be read.
    #[error("the domain XML has a malformed attribute (at byte {position})")]
    Attribute {
        /// Byte offset of the element.
        position: u64,
        /// Cause.
        #[source]
        source: quick_xml::events::attributes::AttrError,
    },
    /// An attribute value could not be unescaped.
    #[error("the domain XML has an attribute value that cannot be unescaped (at byte {position})")]
    AttributeValue {
        /// Byte offset of the element.
        position: u64,
        /// Cause.
        #[source]
        source: quick_xml::Error,
    },
    /// There is no root element, or text follows it that is not whitespace or a comment.
    #[error("the domain XML has {0}")]
    Structure(&'static str),
    /// Writing failed (only on an invalid name, since the output is memory).
    #[error("cannot write the domain XML")]
    Write(#[source] std::io::Error),
}

/// A node of the tree.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    /// An element.
    Element(Element),
    /// Anything else, as read: text, a reference, CDATA, a comment, a processing instruction.
    Other(Event<'static>),
}

/// An element with its qualified name (`prefix:local` as written), its attributes in order
/// (values unescaped) and its children.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Element {
    /// The qualified name, as written.
    pub name: String,
    /// The attributes, in document order: (qualified name, unescaped value).
    pub attrs: Vec<(String, String)>,
    /// The children.
    pub children: Vec<Node>,
}

/// A parsed document: what comes before the root (declaration, comments, DOCTYPE), the root,
/// and what follows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// Events before the root element.
    pub prolog: Vec<Event<'static>>,
    /// The root element.
    pub root: Element,
    /// Events after the root element.
    pub epilog: Vec<Event<'static>>,
}

impl Element {
    /// An element with no attributes and no children.
    pub fn new(name: impl Into<String>) -> Element {
        Element {
            name: name.into(),
            ..Element::default()
        }
    }

    /// This element with attribute `name` set to `value` (builder style).
    pub fn with_attr(mut self, name: &str, value: &str) -> Element {
        self.set_attr(name, value);
        self
    }

    /// The value of attribute `name`.
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Sets attribute `name` (in place when present, else appended).
    pub fn set_attr(&mut self, name: &str, value: &str) {
        match self.attrs.iter_mut().find(|(n, _)| n == name) {
            Some((_, v)) => *v = value.to_owned(),
            None => self.attrs.push((name.to_owned(), value.to_owned())),
        }
    }

    /// The child elements.
    pub fn elements(&self) -> impl Iterator<Item = &Element> {
        self.children.iter().filter_map(|n| match n {
            Node::Element(e) => Some(e),
            Node::Other(_) => None,
        })
    }

    /// The first child element named `name`.
    pub fn child(&self, name: &str) -> Option<&Element> {
        self.elements().find(|e| e.name == name)
    }

    /// The first child element named `name`, mutably.
    pub fn child_mut(&mut self, name: &str) -> Option<&mut Element> {
        self.children.iter_mut().find_map(|n| match n {
            Node::Element(e) if e.name == name => Some(e),
            _ => None,
        })
    }

    /// The position in `children` of the first child element named `name`.
    pub fn position(&self, name: &str) -> Option<usize> {
        self.children
            .iter()
            .position(|n| matches!(n, Node::Element(e) if e.name == name))
    }

    /// The element's text content (its text children joined, references resolved for the
    /// predefined entities), trimmed.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for node in &self.children {
            match node {
                Node::Other(Event::Text(t)) => {
                    out.push_str(t);
                }
                Node::Other(Event::GeneralRef(r)) => {
                    if let Ok(Some(c)) = r.resolve_char_ref() {
                        out.push(c);
                    } else {
                        if let Some(s) = quick_xml::escape::resolve_predefined_entity(r) {
                            out.push_str(s);
                        }
                    }
                }
                Node::Other(Event::CData(c)) => {
                    out.push_str(c);
                }
                _ => {}
            }
        }
        out.trim().to_owned()
    }
}

/// Reads `text` into a [`Document`].
pub fn parse(text: &str) -> Result<Document, XmlError> {
    let mut reader = Reader::from_str(text);
    reader.config_mut().check_end_names = true;
    let mut prolog = Vec::new();
    let mut epilog = Vec::new();
    // The open elements, innermost last.
    let mut open: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    loop {
        let position = reader.buffer_position();
        let event = reader
            .read_event()
            .map_err(|source| XmlError::Syntax { position, source })?;
        match event {
            Event::Start(start) => {
                if root.is_some() {
                    return Err(XmlError::Structure("a second root element"));
                }
                open.push(element_of(&start, position)?);
            }
            Event::Empty(start) => {
                if root.is_some() {
                    return Err(XmlError::Structure("a second root element"));
                }
                let element = element_of(&start, position)?;
                match open.last_mut() {
                    Some(parent) => parent.children.push(Node::Element(element)),
                    None => root = Some(element),
                }
            }
            Event::End(_) => {
                // `check_end_names` has matched the name; an unmatched end is a syntax error.
                let Some(element) = open.pop() else {
                    return Err(XmlError::Structure("an end tag without a start tag"));
                };
                match open.last_mut() {
                    Some(parent) => parent.children.push(Node::Element(element)),
                    None => root = Some(element),
                }
            }
            Event::Eof => break,
            other => {
                let other = other.into_owned();
                match (open.last_mut(), &root) {
                    (Some(parent), _) => parent.children.push(Node::Other(other)),
                    (None, None) => prolog.push(other),
                    (None, Some(_)) => epilog.push(other),
                }
            }
        }
    }
    if !open.is_empty() {
        return Err(XmlError::Structure("an element that is never closed"));
    }
    let root = root.ok_or(XmlError::Structure("no root element"))?;
    Ok(Document {
        prolog,
        root,
        epilog,
    })
}

/// The element of a start (or empty) tag, attributes unescaped.
fn element_of(start: &BytesStart<'_>, position: u64) -> Result<Element, XmlError> {
    let mut element = Element::new(start.name().as_ref());
    for attr in start.attributes() {
        let attr = attr.map_err(|source| XmlError::Attribute { position, source })?;
        let value = attr
            .normalized_value(XmlVersion::Implicit1_0)
            .map_err(|source| XmlError::AttributeValue { position, source })?;
        element
            .attrs
            .push((attr.key.as_ref().to_owned(), value.into_owned()));
    }
    Ok(element)
}

impl Document {
    /// Writes the document as text.
    pub fn write(&self) -> Result<String, XmlError> {
        let mut writer = Writer::new(Vec::new());
        for event in &self.prolog {
            writer
                .write_event(event.borrow())
                .map_err(XmlError::Write)?;
        }
        write_element(&mut writer, &self.root)?;
        for event in &self.epilog {
            writer
                .write_event(event.borrow())
                .map_err(XmlError::Write)?;
        }
        // Every event was UTF-8 (read from a &str, or built from Strings).
        String::from_utf8(writer.into_inner())
            .map_err(|e| XmlError::Write(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))
    }
}

/// Writes one element and its children.
fn write_element(writer: &mut Writer<Vec<u8>>, element: &Element) -> Result<(), XmlError> {
    let mut start = BytesStart::new(element.name.as_str());
    for (name, value) in &element.attrs {
        start.push_attribute((name.as_str(), value.as_str()));
    }
    if element.children.is_empty() {
        return writer
            .write_event(Event::Empty(start))
            .map_err(XmlError::Write);
    }
    writer
        .write_event(Event::Start(start))
        .map_err(XmlError::Write)?;
    for child in &element.children {
        match child {
            Node::Element(e) => write_element(writer, e)?,
            Node::Other(event) => writer
                .write_event(event.borrow())
                .map_err(XmlError::Write)?,
        }
    }
    writer
        .write_event(Event::End(BytesEnd::new(element.name.as_str())))
        .map_err(XmlError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_the_content() {
        let text = "<?xml version=\"1.0\"?>\n<!-- c -->\n<a x=\"1\" y=\"a&amp;b\">\n  <b>t &lt; u</b>\n  <c/>\n  <![CDATA[x]]>\n</a>\n";
        let doc = parse(text).expect("parses");
        assert_eq!(doc.root.attr("y"), Some("a&b"));
        assert_eq!(doc.root.child("b").expect("b").text(), "t < u");
        assert_eq!(doc.write().expect("writes"), text);
    }

    #[test]
    fn broken_xml_is_an_error() {
        for bad in ["<a><b></a>", "<a>", "", "<a/><b/>", "<a x=1/>"] {
            assert!(parse(bad).is_err(), "{bad:?} parsed");
        }
    }
}
